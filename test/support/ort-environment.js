'use strict';
// Jest runs each test file in a vm context with its own globals, but native addons
// (onnxruntime-node, sharp) build their outputs with the *host* realm's constructors.
// onnxruntime-common then checks `data instanceof Float32Array` against the test realm's
// Float32Array and fails ("A float32 tensor's data must be type of function Float32Array()").
// Sharing the host constructors makes both realms agree (runtime-findings §9).
const { TestEnvironment } = require('jest-environment-node');

const SHARED = [
  'ArrayBuffer',
  'SharedArrayBuffer',
  'DataView',
  'Int8Array',
  'Uint8Array',
  'Uint8ClampedArray',
  'Int16Array',
  'Uint16Array',
  'Int32Array',
  'Uint32Array',
  'Float32Array',
  'Float64Array',
  'BigInt64Array',
  'BigUint64Array',
  'Float16Array',
];

class OrtEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    for (const name of SHARED) {
      if (typeof globalThis[name] === 'function') this.global[name] = globalThis[name];
    }
  }
}

module.exports = OrtEnvironment;
