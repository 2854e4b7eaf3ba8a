"""The TikTok token proxy for Auth0, one module per concern. Lower layers never import higher ones:

    config, errors, logs      settings; OAuth error answers; log lines and redaction
    upstream                  a small keep-alive HTTP/1.1 client (no TikTok or OAuth knowledge)
    inbound, tiktok           reading Auth0's request; every TikTok quirk, the call, the normalization
    app                       routes, the relay's rules, the lifespan
    auth0/                    the Management API tooling: setup-auth0, doctor, revoke-user
    cli                       the command line, on top of both

tests/test_layers.py fails if an import breaks this order or forms a cycle.
"""
