// Validate one glTF/GLB file with the Khronos glTF validator (npm package `gltf-validator`) and print its
// report as JSON on stdout. Usage: NODE_PATH=DIR/node_modules node validate_gltf.js FILE
// Exit status: 0 no errors, 1 errors, 2 could not run.
const fs = require("fs");
const path = require("path");
let validator;
try {
  validator = require("gltf-validator");
} catch (e) {
  console.error("gltf-validator is not installed: npm install gltf-validator (then set NODE_PATH)");
  process.exit(2);
}
const file = process.argv[2];
const data = new Uint8Array(fs.readFileSync(file));
validator
  .validateBytes(data, {
    uri: path.basename(file),
    maxIssues: 200,
    externalResourceFunction: (uri) =>
      Promise.reject(new Error("external resources are not expected: " + uri)),
  })
  .then((report) => {
    console.log(JSON.stringify(report, null, 1));
    process.exit(report.issues.numErrors > 0 ? 1 : 0);
  })
  .catch((e) => {
    console.error("validator failed: " + e);
    process.exit(2);
  });
