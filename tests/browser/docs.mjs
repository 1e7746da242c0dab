// The gateway's /docs page in a real browser: headless chromium driven by Playwright.
//
//   node tests/browser/docs.mjs http://127.0.0.1:8080
//
// Loads /docs, finds the greeter's SayHello operation, clicks "Try it out", sends
// {"name":"Browser"} and checks that the page shows the reply `Hello Browser`. Fails when the
// page requests anything from another host (such requests are also blocked), breaks its
// Content-Security-Policy, throws, or gets an error status for any of its own requests.
// Exit 0 on success; otherwise one `docs.mjs: ...` line on stderr says what went wrong.
//
// Needs `playwright-core` (tests/browser/node_modules, from `npm ci` there) and chromium at
// /usr/bin/chromium (or $CHROMIUM); scripts/setup installs both. Called by
// tests/tests/gateway_docs.rs with a running gateway and greeter.

import { chromium } from "playwright-core";

const STEP_MS = 15_000;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

class Failure extends Error {}
const fail = (message) => {
  throw new Failure(message);
};

async function main() {
  const base = process.argv[2];
  if (!base || !/^https?:\/\//.test(base)) {
    fail("usage: node tests/browser/docs.mjs http://HOST:PORT (the gateway)");
  }
  const gateway = new URL(base).origin;

  const browser = await chromium
    .launch({
      executablePath,
      headless: true,
      // Root in a container: chromium's sandbox cannot start there.
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    })
    .catch((e) => fail(`cannot start chromium at ${executablePath} (scripts/setup installs it): ${e.message}`));
  try {
    return await drive(browser, gateway);
  } finally {
    await browser.close();
  }
}

async function drive(browser, gateway) {
  const context = await browser.newContext();
  context.setDefaultTimeout(STEP_MS);

  const requests = [];
  const outside = [];
  const broken = [];
  const problems = [];
  // Every request the page makes: the gateway's are let through, any other is recorded and
  // blocked (this machine may have no internet; the page must not need it).
  await context.route("**/*", (route) => {
    const url = route.request().url();
    requests.push(`${route.request().method()} ${url}`);
    if (new URL(url).origin !== gateway) {
      outside.push(url);
      return route.abort("blockedbyclient");
    }
    return route.continue();
  });
  context.on("response", (response) => {
    if (response.status() >= 400) broken.push(`${response.status()} ${response.url()}`);
  });

  const page = await context.newPage();
  page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
  page.on("console", (message) => {
    // A CSP violation is reported on the console as "Refused to ... Content Security Policy".
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });

  const loaded = await page.goto(`${gateway}/docs`, { waitUntil: "load" });
  if (!loaded || loaded.status() !== 200) fail(`GET /docs answered ${loaded?.status()}`);
  const csp = loaded.headers()["content-security-policy"] || "";
  if (!csp.includes("default-src 'none'")) fail(`GET /docs has no strict Content-Security-Policy: ${csp || "none"}`);

  // Swagger UI fetches openapi.json and renders one .opblock per operation, or an error.
  const rendered = page.locator(".opblock, .swagger-ui .errors-wrapper .errors, .swagger-ui .loading-container .errors");
  await rendered
    .first()
    .waitFor()
    .catch(() => fail(`the page rendered no operation within ${STEP_MS} ms; requests: ${requests.join(", ")}`));
  const uiError = page.locator(".swagger-ui .errors-wrapper .errors, .swagger-ui .loading-container .errors");
  if (await uiError.count()) {
    fail(`Swagger UI could not load the API description: ${(await uiError.first().innerText()).replace(/\s+/g, " ")}`);
  }

  // The operation: a POST whose path (data-path, without the zero-width breaks of the text)
  // is the greeter's SayHello.
  const operation = page
    .locator(".opblock.opblock-post")
    .filter({ has: page.locator('.opblock-summary-path[data-path*="greeter" i][data-path$="/sayhello" i]') })
    .first();
  if (!(await operation.count())) {
    const paths = await page.locator(".opblock-summary-path").evaluateAll((els) => els.map((e) => e.dataset.path));
    fail(`no POST operation for the greeter's SayHello on the page; operations: ${paths.join(", ") || "none"}`);
  }
  await operation.locator(".opblock-summary").first().click();

  // With tryItOutEnabled the button already reads "Cancel"; otherwise it is "Try it out".
  const tryIt = operation.locator("button.try-out__btn");
  await tryIt.waitFor();
  if (/try it out/i.test(await tryIt.innerText())) await tryIt.click();

  const body = operation.locator("textarea.body-param__text");
  await body.waitFor().catch(() => fail("the operation has no request body editor after \"Try it out\""));
  await body.fill('{"name":"Browser"}');
  await operation.locator("button.execute").click();

  const reply = operation.locator(".live-responses-table .response-col_description");
  await reply
    .filter({ hasText: "Hello Browser" })
    .first()
    .waitFor()
    .catch(async () => {
      const shown = (await reply.allInnerTexts().catch(() => [])).join(" | ").replace(/\s+/g, " ");
      fail(`the page shows no "Hello Browser" reply after Execute; it shows: ${shown || "nothing"}`);
    });
  const call = requests.find((r) => /^POST .*\/sayhello$/i.test(r));
  if (!call) fail(`Execute sent no POST to SayHello; requests: ${requests.join(", ")}`);

  if (outside.length) fail(`the page requested ${outside.length} URL(s) outside the gateway: ${outside.join(", ")}`);
  if (broken.length) fail(`requests answered with an error status: ${broken.join(", ")}`);
  if (problems.length) fail(`the page reported errors: ${problems.join(" | ")}`);
  return `docs.mjs: ok: ${requests.length} requests, all to ${gateway}; ${call} answered "Hello Browser"`;
}

try {
  console.log(await main());
} catch (e) {
  console.error(`docs.mjs: ${e instanceof Failure ? e.message : e.stack || e}`);
  process.exitCode = 1;
}
