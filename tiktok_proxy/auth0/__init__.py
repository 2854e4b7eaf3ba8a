"""The Auth0 side of the TikTok connection, for the command line: the Management API client (`management`),
`setup-auth0` (`setup`), `doctor` (`doctor`) and `revoke-user` (`revoke_user`).

Every failure ends in an AdminError: one clear line, never a traceback, and never a secret or a token.
The request path never imports this package.
"""
