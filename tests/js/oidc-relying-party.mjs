// openid-client (v6, panva's certified and strict relying party) against the proxy's OpenID Connect facade.
// Run by tests/test_oidc_relying_parties.py, which starts the proxy and TikTok's stand-in and passes, as JSON in
// OIDC_RP: issuer, clientId, clientSecret, redirectUri, auth ("post" or "basic"), alg, and for a key rotation
// oldIdToken (issued before it) and resultFile (where the ID token and its kid are written); refreshToken for
// the refresh answered without an ID token (TikTok's user info failing), run alone by --test-name-pattern.
// Not named *.test.mjs: `node --test tests/js/` (the profile script's tests) must not pick it up on its own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as client from 'openid-client';
import * as jose from 'jose';

const rp = JSON.parse(process.env.OIDC_RP);

async function configuration() {
  const auth = rp.auth === 'basic' ? client.ClientSecretBasic(rp.clientSecret) : client.ClientSecretPost(rp.clientSecret);
  const config = await client.discovery(
    new URL(rp.issuer),
    rp.clientId,
    { id_token_signed_response_alg: rp.alg },
    auth,
    { execute: [client.allowInsecureRequests] }, // loopback http: the stand-ins run on 127.0.0.1
  );
  client.enableNonRepudiationChecks(config); // or openid-client never checks the ID token's signature
  return config;
}

// The browser's part: the facade's authorize redirect, TikTok's consent page and its Authorize button, the
// facade's callback, and the redirect back to the relying party. Returns the URL the RP's callback received.
// Like a browser, it brings the cookie that the authorize step set back to the callback, which refuses a sign-in
// without it.
async function consent(authorizationUrl) {
  let answer = await fetch(authorizationUrl, { redirect: 'manual' });
  assert.equal(answer.status, 302, await answer.text());
  const cookie = answer.headers.getSetCookie().map((line) => line.split(';')[0]).join('; ');
  assert.match(cookie, /^tiktok-oidc-/);
  const page = new URL(answer.headers.get('location'));
  answer = await fetch(page);
  const consentId = (await answer.text()).match(/name="consent" value="([^"]+)"/)[1];
  answer = await fetch(new URL(page.pathname, page.origin), {
    method: 'POST',
    body: new URLSearchParams({ consent: consentId, decision: 'authorize' }),
    redirect: 'manual',
  });
  const callback = answer.headers.get('location');
  assert.ok(callback.startsWith(`${rp.issuer}/oidc/callback?`), callback);
  answer = await fetch(callback, { redirect: 'manual', headers: { cookie } });
  assert.equal(answer.status, 302, await answer.text());
  const back = new URL(answer.headers.get('location'));
  assert.ok(back.href.startsWith(`${rp.redirectUri}?`), back.href);
  return back;
}

async function signIn(config, scope = 'openid profile', maxAge = undefined) {
  const verifier = client.randomPKCECodeVerifier();
  const nonce = client.randomNonce();
  const state = client.randomState();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: rp.redirectUri,
    scope,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    nonce,
    state,
    ...(maxAge === undefined ? {} : { max_age: String(maxAge) }),
  });
  const back = await consent(url);
  try {
    return await client.authorizationCodeGrant(config, back, {
      pkceCodeVerifier: verifier,
      expectedNonce: nonce,
      expectedState: state,
      idTokenExpected: true,
      maxAge, // with it, openid-client requires auth_time and checks it against max_age
    });
  } catch (error) {
    // openid-client says "invalid response encountered"; what was wrong with it is in the cause.
    if (error.cause?.message) error.message += `: ${error.cause.message}`;
    throw error;
  }
}

test('discovery', async () => {
  const config = await configuration();
  const metadata = config.serverMetadata();
  assert.equal(metadata.issuer, rp.issuer);
  assert.deepEqual(metadata.id_token_signing_alg_values_supported, [rp.alg]);
});

test('code flow with PKCE, nonce and state; the ID token verified; userinfo; refresh', async () => {
  const config = await configuration();
  const tokens = await signIn(config);
  const claims = tokens.claims();
  assert.equal(claims.iss, rp.issuer);
  assert.equal(claims.aud, rp.clientId);
  assert.equal(claims.name, 'Ada on TikTok');
  assert.equal(claims.preferred_username, 'ada');
  assert.equal(jose.decodeProtectedHeader(tokens.id_token).alg, rp.alg);

  const info = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  assert.equal(info.sub, claims.sub);
  assert.equal(info.picture, 'https://p16.example/avatar.jpeg');

  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  assert.equal(refreshed.claims().sub, claims.sub);
  assert.notEqual(refreshed.refresh_token, tokens.refresh_token); // TikTok rotates it (Q8)
  if (rp.resultFile) {
    const kid = jose.decodeProtectedHeader(tokens.id_token).kid;
    writeFileSync(rp.resultFile, JSON.stringify({ idToken: tokens.id_token, kid }));
  }
});

test('openid alone: no profile claims', async () => {
  const tokens = await signIn(await configuration(), 'openid');
  assert.equal(tokens.claims().preferred_username, undefined);
  assert.equal(tokens.claims().name, 'Ada on TikTok');
});

test('max_age: the ID token carries auth_time, and openid-client checks it', async () => {
  const before = Math.floor(Date.now() / 1000);
  const tokens = await signIn(await configuration(), 'openid', 300);
  const authTime = tokens.claims().auth_time;
  assert.ok(authTime >= before - 1 && authTime <= Math.floor(Date.now() / 1000), String(authTime));
});

test('prompt=none: login_required at once, with the state, and no TikTok page', async () => {
  const config = await configuration();
  const state = client.randomState();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: rp.redirectUri,
    scope: 'openid',
    prompt: 'none',
    state,
  });
  const answer = await fetch(url, { redirect: 'manual' });
  const back = new URL(answer.headers.get('location'));
  assert.ok(back.href.startsWith(`${rp.redirectUri}?`), back.href); // straight back to the relying party
  await assert.rejects(
    client.authorizationCodeGrant(config, back, { expectedState: state }),
    (error) => error instanceof client.AuthorizationResponseError && error.error === 'login_required',
  );
});

test('a refresh answered without an ID token keeps TikTok\'s new tokens', { skip: !rp.refreshToken }, async () => {
  const refreshed = await client.refreshTokenGrant(await configuration(), rp.refreshToken);
  assert.equal(refreshed.id_token, undefined);
  assert.equal(refreshed.claims(), undefined);
  assert.ok(refreshed.refresh_token.startsWith('rft.') && refreshed.refresh_token !== rp.refreshToken);
  assert.ok(refreshed.access_token.startsWith('act.'));
  writeFileSync(rp.resultFile, JSON.stringify({ refreshToken: refreshed.refresh_token }));
});

test('a token signed before a key rotation still verifies through the JWKS', { skip: !rp.oldIdToken }, async () => {
  const config = await configuration();
  const keys = jose.createRemoteJWKSet(new URL(config.serverMetadata().jwks_uri));
  const { payload, protectedHeader } = await jose.jwtVerify(rp.oldIdToken, keys, {
    issuer: rp.issuer,
    audience: rp.clientId,
  });
  assert.equal(payload.name, 'Ada on TikTok');
  const fresh = await signIn(config);
  assert.notEqual(jose.decodeProtectedHeader(fresh.id_token).kid, protectedHeader.kid); // the new key signs now
});
