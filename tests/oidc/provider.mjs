// The test OpenID Provider: oidc-provider (the certified Node.js implementation) over HTTPS
// on a loopback port. Started by tests/oidc_harness.py; never used outside the tests.
//
//   node provider.mjs CONFIG.json PORT CERT.pem KEY.pem JWKS.json
//
// CONFIG.json: accounts (password, claims, groups) and clients (tests/oidc/provider.json).
// JWKS.json: the provider's private signing keys (made by the harness, so the tests can
// also mint tokens with the provider's own keys). The login page is ours (oidc-provider
// leaves interactions to the application); everything else is the provider's own.
import fs from 'node:fs';
import https from 'node:https';
import querystring from 'node:querystring';
import Provider from 'oidc-provider';

const [configPath, port, certPath, keyPath, jwksPath] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const jwks = JSON.parse(fs.readFileSync(jwksPath, 'utf8'));
const issuer = `https://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks,
  cookies: { keys: ['iast-test-cookie-key'] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  // Put the scopes' claims in the ID token itself (the CA reads only the ID token).
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
  },
  enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256', 'EdDSA'] },
  ttl: { DeviceCode: 120, IdToken: 300, AccessToken: 300, Interaction: 300, Session: 3600, Grant: 3600 },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const a = config.accounts[id];
    if (!a) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: a.email, email_verified: a.email_verified,
                 preferred_username: a.preferred_username, name: id, groups: a.groups };
      },
    };
  },
  // First-party client: no consent page; the grant covers what was asked.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const found = await ctx.oidc.provider.Grant.find(grantId);
      if (found) return found;
    }
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
});
provider.proxy = false;

function page(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!DOCTYPE html><html><body>${body}</body></html>`);
}

async function readBody(req) {
  let data = '';
  for await (const chunk of req) data += chunk;
  return querystring.parse(data);
}

// The login page: account + password (and, for tests of max_auth_age, "auth_age" seconds to
// back-date the sign-in, standing in for an IdP session that signed in earlier).
async function interaction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    return page(res, 200, `<h1>Sign in</h1><form method="post" action="/interaction/${uid}">
      <input name="login"><input name="password" type="password"><input type="hidden" name="auth_age" value="0">
      <button type="submit">Sign in</button></form>`);
  }
  const form = await readBody(req);
  const account = config.accounts[form.login];
  if (!account || account.password !== form.password) {
    return page(res, 403, '<p class="error">wrong account or password</p>');
  }
  const ts = Math.floor(Date.now() / 1000) - Number(form.auth_age || 0);
  const result = { login: { accountId: form.login, ts, amr: ['pwd'], acr: 'urn:iast:test:pwd' } };
  if (details.prompt.name === 'consent') {
    const grant = new provider.Grant({ clientId: details.params.client_id, accountId: form.login });
    grant.addOIDCScope('openid email profile groups');
    result.consent = { grantId: await grant.save() };
  }
  return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

const callback = provider.callback();
const server = https.createServer({ cert: fs.readFileSync(certPath), key: fs.readFileSync(keyPath) }, (req, res) => {
  const m = req.url.match(/^\/interaction\/([A-Za-z0-9_-]+)$/);
  if (m) {
    interaction(req, res, m[1]).catch((err) => page(res, 500, `<p class="error">${String(err.message)}</p>`));
    return;
  }
  callback(req, res);
});
server.listen(Number(port), '127.0.0.1', () => {
  process.stdout.write(`listening ${issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
