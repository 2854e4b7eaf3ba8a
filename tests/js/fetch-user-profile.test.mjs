// The shipped Fetch User Profile script, run as Auth0 runs it, against a local TikTok user-info stand-in.
// Run with: node --test tests/js/   (pytest runs it too: tests/test_profile_script.py)
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { types } from 'node:util';
import vm from 'node:vm';
import { requestStandIn } from './request-stand-in.cjs';

const SCRIPT = new URL('../../tiktok_proxy/auth0/fetch-user-profile.js', import.meta.url);
const BASIC_FIELDS = ['open_id', 'union_id', 'avatar_url', 'avatar_url_100', 'avatar_large_url', 'display_name'];
const PROFILE_FIELDS = ['username', 'bio_description', 'profile_deep_link', 'is_verified'];
const USER = {
  open_id: 'afd97af1-b87b-48b9-ac98-410aghda5344',
  union_id: 'c9c60f44-a68e-4f5d-84dd-ce22faeb0ba1',
  avatar_url: 'https://p16.example/avatar.jpeg',
  avatar_url_100: 'https://p16.example/avatar100.jpeg',
  avatar_large_url: 'https://p16.example/avatar-large.jpeg',
  display_name: 'Ada on TikTok',
  username: 'ada',
  bio_description: 'hello',
  profile_deep_link: 'https://www.tiktok.com/@ada',
  is_verified: false
};
// What each test token was granted, as TikTok would know it.
const TOKENS = {
  'act.basic': ['user.info.basic'],
  'act.profile': ['user.info.basic', 'user.info.profile'],
  'act.no-union': ['user.info.basic']
};

let server;
const seen = [];

// TikTok's GET /v2/user/info/: the v2 envelope, errors by scope, 401 for an unknown token.
function userInfo(req, res) {
  const url = new URL(req.url, 'http://stand-in');
  const token = (req.headers.authorization || '').replace(/^Bearer /, '');
  const fields = (url.searchParams.get('fields') || '').split(',');
  seen.push({ path: url.pathname, token, fields });
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  const fail = (status, code, message) =>
    reply(status, { data: {}, error: { code, message, log_id: '20261122LOGID' + status } });

  if (url.pathname !== '/v2/user/info/') return fail(404, 'not_found', 'Unsupported path');
  if (token === 'act.broken') return fail(200, 'internal_error', 'Something went wrong');
  const scopes = TOKENS[token];
  if (!scopes) return fail(401, 'access_token_invalid', 'The access token is invalid or not found in the request.');
  const allowed = scopes.includes('user.info.profile') ? [...BASIC_FIELDS, ...PROFILE_FIELDS] : BASIC_FIELDS;
  if (fields.some((field) => !allowed.includes(field))) {
    return fail(400, 'scope_permission_missed', 'The user did not authorize the scope required for the fields.');
  }
  const user = {};
  for (const field of fields) {
    if (!(token === 'act.no-union' && field === 'union_id')) user[field] = USER[field];
  }
  reply(200, { data: { user }, error: { code: 'ok', message: '', log_id: '20261122LOGIDOK' } });
}

// The `request` module Auth0 gives these scripts (request-stand-in.cjs), with TikTok's origin pointed at the
// local stand-in; any other origin is a test failure.
const TIKTOK = 'https://open.tiktokapis.com';
const hosts = {}; // filled in once the stand-in listens
const viaStandIn = requestStandIn(hosts);
const request = {
  get(options, callback) {
    assert.equal(new URL(options.url).origin, TIKTOK);
    viaStandIn.get(options, callback);
  }
};

function fetchUserProfile(accessToken, context) {
  const source = readFileSync(SCRIPT, 'utf8');
  const fn = vm.runInNewContext(`${source}\n;fetchUserProfile`, { request });
  // The script runs in its own realm; copy the profile into this one so deepEqual compares fields only.
  return new Promise((resolve) =>
    fn(accessToken, context, (err, profile) => resolve({ err, profile: profile && { ...profile } }))
  );
}

before(async () => {
  server = http.createServer(userInfo);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  hosts[TIKTOK] = `http://127.0.0.1:${server.address().port}`;
});

after(() => server.close());

test('basic scope: asks only for basic fields and maps the normalized profile', async () => {
  const { err, profile } = await fetchUserProfile('act.basic', { open_id: USER.open_id, scope: 'user.info.basic' });
  assert.equal(err, null);
  assert.deepEqual(profile, {
    user_id: USER.open_id,
    name: 'Ada on TikTok',
    nickname: 'Ada on TikTok',
    picture: USER.avatar_large_url,
    union_id: USER.union_id
  });
  const request = seen.at(-1);
  assert.equal(request.path, '/v2/user/info/');
  assert.equal(request.token, 'act.basic');
  assert.ok(request.fields.every((field) => BASIC_FIELDS.includes(field)));
});

test('profile scope (space- or comma-separated): adds username, deep link and verification', async () => {
  for (const scope of ['user.info.basic user.info.profile', 'user.info.basic,user.info.profile']) {
    const { err, profile } = await fetchUserProfile('act.profile', { open_id: USER.open_id, scope });
    assert.equal(err, null);
    assert.equal(profile.username, 'ada');
    assert.equal(profile.profile_deep_link, 'https://www.tiktok.com/@ada');
    assert.equal(profile.is_verified, false);
    assert.ok(seen.at(-1).fields.includes('username'));
  }
});

test('no scope in context: basic fields only, so TikTok never refuses the field list', async () => {
  const { err, profile } = await fetchUserProfile('act.basic', {});
  assert.equal(err, null);
  assert.equal(profile.user_id, USER.open_id);
  assert.equal(profile.username, undefined);
});

test('missing union_id is simply left out', async () => {
  const { err, profile } = await fetchUserProfile('act.no-union', { scope: 'user.info.basic' });
  assert.equal(err, null);
  assert.equal(profile.user_id, USER.open_id);
  assert.equal('union_id' in profile, false);
});

test('HTTP 401: an Error carrying TikTok code, message and log_id', async () => {
  const { err, profile } = await fetchUserProfile('act.expired', { scope: 'user.info.basic' });
  assert.equal(profile, undefined);
  assert.ok(types.isNativeError(err)); // created in the script's own realm, as in Auth0
  assert.equal(err.code, 'access_token_invalid');
  assert.equal(err.log_id, '20261122LOGID401');
  assert.equal(err.statusCode, 401);
  assert.match(err.message, /HTTP 401 access_token_invalid: The access token is invalid/);
  assert.match(err.message, /log_id 20261122LOGID401/);
});

test('an error envelope with HTTP 200 is still an error', async () => {
  const { err } = await fetchUserProfile('act.broken', { scope: 'user.info.basic' });
  assert.ok(types.isNativeError(err)); // created in the script's own realm, as in Auth0
  assert.equal(err.code, 'internal_error');
  assert.match(err.message, /HTTP 200 internal_error: Something went wrong \(log_id 20261122LOGID200\)/);
});

test('asking for a field whose scope was not granted is what the stand-in refuses', async () => {
  // Guards the stand-in itself: a script that asked for profile fields on a basic token would fail here.
  const { err } = await fetchUserProfile('act.basic', { scope: 'user.info.basic user.info.profile' });
  assert.ok(types.isNativeError(err)); // created in the script's own realm, as in Auth0
  assert.equal(err.code, 'scope_permission_missed');
});
