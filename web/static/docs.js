'use strict';
// Swagger UI from the packaged copy (served under /docs-assets): no CDN, no inline script.
// The document is found beside this script (/static/docs.js -> /openapi.json), so that it
// is found under the path prefix a proxy serves the app under, too.
const openapiUrl = new URL('../openapi.json', document.currentScript.src).pathname;
window.addEventListener('DOMContentLoaded', () => {
  window.ui = SwaggerUIBundle({
    url: openapiUrl,
    dom_id: '#swagger-ui',
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
  });
});
