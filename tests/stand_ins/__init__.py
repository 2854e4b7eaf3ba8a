"""Local stand-ins for what the proxy talks to, shared by the tests (and bench/attack.py):

- tiktok: TikTok's v2 OAuth endpoints, authorize page and user info, quirks included (docs/tiktok-quirks.md);
- faulty_upstream: a raw TCP upstream that misbehaves on purpose (silence, drips, resets, garbage, idle closes);
- auth0_management: Auth0's Management API, as setup-auth0, doctor and revoke-user use it;
- auth0_login: Auth0's login flow for a custom social connection, read from what setup-auth0 wrote.
"""
