// A real OpenID Connect provider (panva's `oidc-provider`) on loopback, for the
// login tests. It stands in for Google or any other identity provider.
//
// usage: node oidc_provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI [--claims-in-id-token]
// (or the environment variables OIDC_PORT, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET,
// OIDC_REDIRECT_URI). Prints `listening http://127.0.0.1:PORT` once it accepts
// connections; the issuer is exactly that URL.
//
// One confidential client (client_secret_basic), code flow only, PKCE required.
// There is no login form: the interaction route logs in the account named by the
// authorization request's `login_hint` and grants the requested scopes.
// `login_hint=alice@example.com` is an account with a verified email,
// `login_hint=unverified:bob@example.com` one whose email is not verified. The
// account id (the ID token's `sub`) is the hint itself.
//
// By default the provider follows the spec's default for the code flow: the ID
// token carries only `sub` and protocol claims, and email/name come from the
// userinfo endpoint. `--claims-in-id-token` puts them in the ID token as well,
// as Google does.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const flags = new Set(process.argv.slice(2).filter((a) => a.startsWith('--')));
const port = Number(args[0] ?? process.env.OIDC_PORT);
const clientId = args[1] ?? process.env.OIDC_CLIENT_ID;
const clientSecret = args[2] ?? process.env.OIDC_CLIENT_SECRET;
const redirectUri = args[3] ?? process.env.OIDC_REDIRECT_URI;
if (!port || !clientId || !clientSecret || !redirectUri) {
  console.error('usage: node oidc_provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI [--claims-in-id-token]');
  process.exit(2);
}

const issuer = `http://127.0.0.1:${port}`;
// A fresh signing key per run: the client must fetch it through discovery.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: `test-${randomBytes(4).toString('hex')}`, use: 'sig', alg: 'RS256' };

const UNVERIFIED = 'unverified:';

function claimsOf(accountId) {
  const unverified = accountId.startsWith(UNVERIFIED);
  const email = unverified ? accountId.slice(UNVERIFIED.length) : accountId;
  const local = email.split('@')[0];
  return {
    sub: accountId,
    email,
    email_verified: !unverified,
    name: local.charAt(0).toUpperCase() + local.slice(1),
  };
}

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  conformIdTokenClaims: !flags.has('--claims-in-id-token'),
  features: { devInteractions: { enabled: false } },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(_ctx, accountId) {
    return { accountId, async claims() { return claimsOf(accountId); } };
  },
});

// Login and consent without a form: one redirect each.
async function interaction(req, res) {
  const { prompt, params, session, grantId } = await provider.interactionDetails(req, res);
  if (prompt.name === 'login') {
    const hint = params.login_hint;
    const result = hint
      ? { login: { accountId: String(hint) } }
      : { error: 'login_required', error_description: 'the test provider needs a login_hint' };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }
  if (prompt.name === 'consent') {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { details } = prompt;
    if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
    if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
    if (details.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(details.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const result = { consent: { grantId: await grant.save() } };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
  }
  res.statusCode = 501;
  res.end(`prompt ${prompt.name} is not implemented by the test provider`);
}

const handle = provider.callback();
const server = createServer((req, res) => {
  if (!req.url.startsWith('/interaction/')) return handle(req, res);
  interaction(req, res).catch((error) => {
    console.error('interaction failed:', error);
    res.statusCode = 500;
    res.end(String(error));
  });
});
server.listen(port, '127.0.0.1', () => console.log(`listening ${issuer}`));

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
