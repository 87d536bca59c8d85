// The official TypeScript SDK client asking and answering through a Lighthouse bridge.
//
// Every request is signed here, in JavaScript, by an independent implementation of our
// RFC 9421 profile (security/signatures.py): label `lh`, components "@method" "@path",
// "@query" with a query, "content-digest" with a body, "mcp-session-id" once the SDK has
// a session; parameters created, nonce, keyid, alg="hmac-sha256". The bridge accepting
// these requests is the interop proof.
//
//   node ts_client.mjs run    < {"url": ..., "agents": {"alice": {"key_id", "secret"}, ...}}
//   node ts_client.mjs vector < {"method", "path", "query", "session", "body", "key_id",
//                                "secret", "nonce", "created"}   (prints the headers)
//
// `run` prints one JSON object: what the tools returned in each flow.
import { createHash, createHmac, randomBytes } from "node:crypto";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const SCHEMA = {
  type: "object",
  properties: { answer: { type: "string" } },
  required: ["answer"],
};

function decodeSecret(secret) {
  const raw = Buffer.from(secret, "base64url");
  if (raw.length !== 32) throw new Error("secret must decode to 32 bytes");
  return raw;
}

function sfString(value) {
  return `"${value.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`;
}

export function signHeaders({ method, path, query, session, body, keyId, secret, nonce, created }) {
  const components = [
    ["@method", method.toUpperCase()],
    ["@path", path],
  ];
  const out = {};
  if (query) components.push(["@query", `?${query}`]);
  if (body && body.length > 0) {
    out["Content-Digest"] = `sha-256=:${createHash("sha256").update(body).digest("base64")}:`;
    components.push(["content-digest", out["Content-Digest"]]);
  }
  if (session !== null && session !== undefined) components.push(["mcp-session-id", session]);
  const params =
    `(${components.map(([name]) => sfString(name)).join(" ")})` +
    `;created=${created ?? Math.floor(Date.now() / 1000)}` +
    `;nonce=${sfString(nonce ?? randomBytes(16).toString("base64url"))}` +
    `;keyid=${sfString(keyId)};alg="hmac-sha256"`;
  const base = [
    ...components.map(([name, value]) => `${sfString(name)}: ${value}`),
    `"@signature-params": ${params}`,
  ].join("\n");
  const mac = createHmac("sha256", secret).update(base, "ascii").digest("base64");
  out["Signature-Input"] = `lh=${params}`;
  out.Signature = `lh=:${mac}:`;
  return out;
}

/** A fetch that signs each request the SDK makes (POST, GET stream, DELETE). */
function signingFetch(keyId, secretText) {
  const secret = decodeSecret(secretText);
  return async (input, init = {}) => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    const headers = new Headers(init.headers ?? {});
    const body = init.body === undefined || init.body === null ? "" : init.body;
    if (typeof body !== "string") throw new Error("only string bodies are signed here");
    const signed = signHeaders({
      method: init.method ?? "GET",
      path: url.pathname,
      query: url.search.replace(/^\?/, ""),
      session: headers.get("mcp-session-id"),
      body: Buffer.from(body, "utf8"),
      keyId,
      secret,
    });
    for (const [name, value] of Object.entries(signed)) headers.set(name, value);
    return fetch(url, { ...init, headers });
  };
}

async function connect(url, agent, name, capabilities = {}) {
  const client = new Client({ name: `ts-judge-${name}`, version: "1.0.0" }, { capabilities });
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    fetch: signingFetch(agent.key_id, agent.secret),
  });
  await client.connect(transport);
  return { client, transport };
}

async function close({ client, transport }) {
  await transport.terminateSession(); // DELETE: the bridge closes the session now
  await client.close();
}

function ask(client, to, message) {
  return client.callTool({
    name: "ask",
    arguments: { to, message, schema: SCHEMA, timeout_s: 20 },
  });
}

async function run({ url, agents }) {
  const out = {};
  // 1. bob answers by elicitation: the bridge pushes elicitation/create on his stream.
  const seen = [];
  const bob = await connect(url, agents.bob, "bob", { elicitation: { form: {} } });
  bob.client.setRequestHandler(ElicitRequestSchema, async (request) => {
    seen.push(request.params);
    return { action: "accept", content: { answer: "42 from typescript" } };
  });
  const alice = await connect(url, agents.alice, "alice");
  out.tools = (await alice.client.listTools()).tools.map((t) => t.name).sort();
  out.server = alice.client.getServerVersion();
  out.protocol = alice.transport.protocolVersion ?? null;
  out.elicitation = { result: await ask(alice.client, "bob", "meaning of life?"), seen };
  await close(bob);

  // 2. carol has no elicitation capability: the request waits in her mailbox, she takes
  //    it with wait_for_messages and answers with respond (the legacy path).
  const carol = await connect(url, agents.carol, "carol");
  const asking = ask(alice.client, "carol", "favourite colour?");
  const waited = await carol.client.callTool({
    name: "wait_for_messages",
    arguments: { timeout_s: 20 },
  });
  const [item] = waited.structuredContent.messages.filter((m) => m.kind === "request");
  const responded = await carol.client.callTool({
    name: "respond",
    arguments: { request_id: item.request_id, action: "accept", content: { answer: "blue" } },
  });
  out.legacy = { waited: waited.structuredContent, responded, result: await asking };
  out.agents = (await alice.client.callTool({ name: "list_agents", arguments: {} }))
    .structuredContent;
  await close(carol);
  await close(alice);
  return out;
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

const [command] = process.argv.slice(2);
const input = await readStdin();
if (command === "vector") {
  const headers = signHeaders({
    ...input,
    keyId: input.key_id,
    secret: decodeSecret(input.secret),
    body: Buffer.from(input.body, "utf8"),
  });
  process.stdout.write(JSON.stringify(headers));
} else if (command === "run") {
  process.stdout.write(JSON.stringify(await run(input)));
} else {
  process.stderr.write("usage: ts_client.mjs run|vector < input.json\n");
  process.exit(2);
}
