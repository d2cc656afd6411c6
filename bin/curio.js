#!/usr/bin/env node
'use strict';
// Curio runs its TypeScript sources directly through tsx (esbuild): no build step to forget,
// and workers load the same sources (see src/inference).
require('tsx/cjs');
const { main } = require('../src/adapters/cli/main.ts');
main().then((code) => {
  process.exitCode = code;
});
