"""The OpenID Connect facade: an OpenID provider in front of TikTok Login Kit, for platforms that speak only OIDC.

app.py mounts its routes (`facade.routes`) only when OIDC_SIGNING_KEY_FILE is set:

    GET  /.well-known/openid-configuration  discovery; the issuer is PUBLIC_URL, exactly
    GET  /oidc/jwks                          the public keys: the current one, then the next and the previous ones
    GET  /oidc/authorize                     the relying party's request → TikTok's authorize page
    GET  /oidc/callback                      TikTok's redirect back → the relying party, with a sealed code
    POST /oidc/token                         a sealed code or a refresh token → TikTok's tokens plus an ID token
    GET  /oidc/userinfo (or POST)            a TikTok access token → the user's claims

It keeps no state: what a later step needs travels sealed (`sealing`) in the state sent to TikTok and in the code
given to the relying party, so any instance serves any step. Every TikTok call and quirk stays in tiktok.py.

- `provider`: the keys, the sealers, discovery and the ID token, built once from the settings;
- `authorize`: the authorization request and TikTok's redirect back;
- `token`: the token and userinfo endpoints;
- `claims`: scopes and claims, in OpenID Connect's words and TikTok's;
- `pages`: the redirects, the refusal page, and the log line and count of each step;
- `jose` and `sealing`: signing (JWK, JWKS, JWS) and the sealed values (AES-GCM);
- `binding`: the cookie that binds each sign-in's state to the browser that started it.
"""
