// A stand-in for the `request` module that Auth0 gives Fetch User Profile scripts as a global: the same call
// shapes and callback, with each public origin sent to a local stand-in (hosts: public origin -> local origin).
// Shared by fetch-user-profile.test.mjs and the Auth0 login stand-in (tests/stand_ins/auth0_login.py).
const http = require('node:http');

function requestStandIn(hosts) {
  return {
    // get(options, cb), get(url, cb) and get(url, options, cb), as the `request` module takes them.
    get(first, second, third) {
      const options = typeof first === 'string' ? { ...(typeof second === 'object' ? second : {}), url: first } : first;
      const callback = typeof second === 'function' ? second : third;
      const target = new URL(options.url);
      const local = hosts[target.origin];
      if (!local) return callback(new Error('no route to ' + target.origin + ' from this test'));
      http
        .get(new URL(target.pathname + target.search, local), { headers: options.headers || {} }, (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (chunk) => (text += chunk));
          res.on('end', () => {
            let body = text;
            if (options.json) {
              try {
                body = JSON.parse(text);
              } catch {
                body = text;
              }
            }
            callback(null, { statusCode: res.statusCode, headers: res.headers }, body);
          });
        })
        .on('error', (err) => callback(err));
    }
  };
}

module.exports = { requestStandIn };
