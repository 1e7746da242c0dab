// Starts Swagger UI on the gateway's OpenAPI document. A file of its own, not an inline script,
// so that the page runs under a Content-Security-Policy allowing scripts from 'self' only.
"use strict";

// The page is /docs (or /{prefix}/docs behind a proxy): the document is openapi.json beside it.
const spec = new URL("openapi.json", document.baseURI).href;

window.ui = SwaggerUIBundle({
  url: spec,
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
  filter: true,
  tryItOutEnabled: true,
  displayRequestDuration: true,
  // Nothing is fetched from outside the gateway: no online validator badge, and no `?url=`
  // query parameter that could point the page at another document.
  validatorUrl: null,
  queryConfigEnabled: false,
});
