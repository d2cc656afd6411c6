'use strict';
/** @type {import('jest').Config} */
module.exports = {
  // Typed arrays are shared with the host realm so onnxruntime-node's outputs pass
  // onnxruntime-common's instanceof checks (see test/support/ort-environment.js).
  testEnvironment: '<rootDir>/test/support/ort-environment.js',
  transform: {
    '^.+\\.tsx?$': ['ts-jest', { tsconfig: '<rootDir>/tsconfig.json', isolatedModules: false, diagnostics: { warnOnly: false } }],
  },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  moduleFileExtensions: ['ts', 'js', 'json', 'node'],
  testPathIgnorePatterns: ['/node_modules/', '/dist/'],
  // Model tests load ONNX sessions on shared, busy CPUs.
  testTimeout: 60000,
};
