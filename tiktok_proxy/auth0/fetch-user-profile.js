/**
 * Auth0 "Fetch User Profile" script for a TikTok custom social connection (strategy oauth2).
 *
 * Paste the whole function into the connection's Fetch User Profile Script, or let
 * `python proxy.py setup-auth0` install it. Auth0 runs it after the token exchange with TikTok's access
 * token and the rest of the token answer (`context`: open_id, scope, ...) from the proxy. `request` is the
 * HTTP module Auth0 provides to these scripts.
 *
 * TikTok v2 answers {"data": {"user": {...}}, "error": {"code": "ok", ...}}, and errors if asked for a field
 * whose scope was not granted, so the fields asked for follow the granted scopes.
 */
function fetchUserProfile(accessToken, context, callback) {
  var granted = String((context && context.scope) || '').split(/[\s,]+/);
  var withProfile = granted.indexOf('user.info.profile') !== -1;
  var fields = ['open_id', 'union_id', 'avatar_url', 'avatar_large_url', 'display_name'];
  if (withProfile) {
    fields.push('username', 'profile_deep_link', 'is_verified');
  }

  request.get(
    {
      url: 'https://open.tiktokapis.com/v2/user/info/?fields=' + fields.join(','),
      headers: { Authorization: 'Bearer ' + accessToken },
      json: true
    },
    function (err, response, body) {
      if (err) {
        return callback(err);
      }
      var error = (body && typeof body === 'object' && body.error) || {};
      if (response.statusCode !== 200 || error.code !== 'ok') {
        var failure = new Error(
          'TikTok user info failed: HTTP ' + response.statusCode + ' ' + (error.code || 'no error code') +
            (error.message ? ': ' + error.message : '') + ' (log_id ' + (error.log_id || '-') + ')'
        );
        failure.code = error.code;
        failure.log_id = error.log_id;
        failure.statusCode = response.statusCode;
        return callback(failure);
      }

      var user = (body.data && body.data.user) || {};
      var userId = user.open_id || (context && context.open_id);
      if (!userId) {
        return callback(new Error('TikTok user info has no open_id (log_id ' + (error.log_id || '-') + ')'));
      }
      var profile = {
        user_id: userId,
        name: user.display_name,
        nickname: user.display_name,
        picture: user.avatar_large_url || user.avatar_url
      };
      if (user.union_id) {
        profile.union_id = user.union_id; // missing for some app types and scopes
      }
      if (withProfile) {
        profile.username = user.username;
        profile.profile_deep_link = user.profile_deep_link;
        profile.is_verified = user.is_verified;
      }
      callback(null, profile);
    }
  );
}
