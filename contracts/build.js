#!/usr/bin/env node
// Compiles every src/*.sol with the pinned solc (solc-js, standard JSON) and
// writes forge-style artifacts out/<Name>.json for each deployable contract.
//
//   node build.js          compile and (re)write out/*.json
//   node build.js --check  compile in memory; exit 1 if any artifact in out/ is
//                          missing, differs, or is stale (CI freshness check)
//
// Output is byte-reproducible: no metadata hash / CBOR is appended to the
// bytecode, and artifacts are written with a fixed key order.
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

const ROOT = __dirname;
const SRC_DIR = path.join(ROOT, 'src');
const OUT_DIR = path.join(ROOT, 'out');
const SOLC_VERSION = '0.8.37';
const EVM_VERSION = 'cancun';
const MAX_DEPLOYED_SIZE = 24576; // EIP-170
const MAX_INITCODE_SIZE = 49152; // EIP-3860
// Pairs of deployable contracts where the second's code runs by delegatecall in the first's
// storage (Cohort's fallback delegates to CohortStages): their storage layouts must be
// identical, or the delegated code would read and write the wrong slots (CohortStages' fallback
// delegates on to CohortRuns, still in Cohort's storage).
const SHARED_STORAGE = [
  ['Cohort', 'CohortStages'],
  ['Cohort', 'CohortRuns'],
];

function fail(msg) {
  process.stderr.write(`error: ${msg}\n`);
  process.exit(1);
}

function compilerInput() {
  const files = fs
    .readdirSync(SRC_DIR)
    .filter((f) => f.endsWith('.sol'))
    .sort();
  if (files.length === 0) fail('no src/*.sol files');
  const sources = {};
  for (const f of files) {
    sources[`src/${f}`] = { content: fs.readFileSync(path.join(SRC_DIR, f), 'utf8') };
  }
  return {
    language: 'Solidity',
    sources,
    settings: {
      evmVersion: EVM_VERSION,
      viaIR: true,
      optimizer: { enabled: true, runs: 200 },
      metadata: { bytecodeHash: 'none', appendCBOR: false },
      outputSelection: {
        '*': {
          '': ['ast'],
          '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object', 'storageLayout'],
        },
      },
    },
  };
}

// Imports outside the provided sources are resolved relative to this folder
// (all project sources are already in the input, so this is a fallback).
function findImports(importPath) {
  const p = path.resolve(ROOT, importPath);
  if (!p.startsWith(ROOT + path.sep)) return { error: `import outside contracts/: ${importPath}` };
  try {
    return { contents: fs.readFileSync(p, 'utf8') };
  } catch (e) {
    return { error: `cannot read ${importPath}: ${e.message}` };
  }
}

// Names of deployable contracts per source unit, from the AST: kind
// "contract" and not abstract (so no interfaces, libraries, abstract contracts).
function deployableNames(ast) {
  const names = new Set();
  for (const node of ast.nodes || []) {
    if (node.nodeType === 'ContractDefinition' && node.contractKind === 'contract' && !node.abstract) {
      names.add(node.name);
    }
  }
  return names;
}

function compile() {
  const version = solc.version();
  if (!version.startsWith(`${SOLC_VERSION}+`)) fail(`expected solc ${SOLC_VERSION}, got ${version}`);

  const output = JSON.parse(solc.compile(JSON.stringify(compilerInput()), { import: findImports }));
  let errors = 0;
  for (const e of output.errors || []) {
    const text = (e.formattedMessage || e.message).trimEnd();
    if (e.severity === 'error') {
      errors += 1;
      process.stderr.write(`${text}\n\n`);
    } else {
      process.stderr.write(`${e.severity}: ${text}\n\n`);
    }
  }
  if (errors > 0) fail(`solc reported ${errors} error(s)`);

  const artifacts = new Map(); // name -> JSON text
  const layouts = new Map(); // name -> normalized storage layout
  let sizeErrors = 0;
  for (const file of Object.keys(output.contracts || {}).sort()) {
    const deployable = deployableNames(output.sources[file].ast);
    for (const name of Object.keys(output.contracts[file]).sort()) {
      if (!deployable.has(name)) continue;
      if (artifacts.has(name)) fail(`two deployable contracts named ${name}`);
      const c = output.contracts[file][name];
      const bytecode = c.evm.bytecode.object;
      const deployed = c.evm.deployedBytecode.object;
      if (/__\$[0-9a-fA-F]{34}\$__/.test(bytecode)) fail(`${name} needs library linking, which is not supported`);
      layouts.set(name, storageLayout(c.storageLayout));
      const deployedSize = deployed.length / 2;
      const initSize = bytecode.length / 2;
      if (deployedSize > MAX_DEPLOYED_SIZE) {
        sizeErrors += 1;
        process.stderr.write(`${name}: deployed bytecode is ${deployedSize} bytes > ${MAX_DEPLOYED_SIZE} (EIP-170)\n`);
      }
      if (initSize > MAX_INITCODE_SIZE) {
        sizeErrors += 1;
        process.stderr.write(`${name}: init code is ${initSize} bytes > ${MAX_INITCODE_SIZE} (EIP-3860)\n`);
      }
      const artifact = {
        abi: c.abi,
        bytecode: { object: `0x${bytecode}` },
        deployedBytecode: { object: `0x${deployed}` },
      };
      artifacts.set(name, {
        text: `${JSON.stringify(artifact, null, 2)}\n`,
        deployedSize,
        initSize,
      });
    }
  }
  if (sizeErrors > 0) fail('contract size limit exceeded');
  for (const [host, guest] of SHARED_STORAGE) {
    const a = layouts.get(host);
    const b = layouts.get(guest);
    if (a === undefined || b === undefined) fail(`shared storage: ${host} or ${guest} is not built`);
    if (a !== b) {
      fail(
        `${guest} runs in ${host}'s storage but their storage layouts differ ` +
          '(state variables belong in CohortBase only)',
      );
    }
  }
  if (artifacts.size === 0) fail('no deployable contracts found');
  return artifacts;
}

// A storage layout as label, slot, offset and type of each variable, with the AST ids that
// solc puts in type names (t_struct(Params)1234_storage) left out.
function storageLayout(layout) {
  const norm = (t) => t.replace(/\)\d+/g, ')');
  return JSON.stringify(
    ((layout && layout.storage) || []).map((v) => [v.label, v.slot, v.offset, norm(v.type)]),
  );
}

function existingArtifacts() {
  if (!fs.existsSync(OUT_DIR)) return [];
  return fs
    .readdirSync(OUT_DIR)
    .filter((f) => f.endsWith('.json'))
    .sort();
}

function main() {
  const args = process.argv.slice(2);
  const unknown = args.filter((a) => a !== '--check');
  if (unknown.length > 0) fail(`unknown argument(s): ${unknown.join(' ')} (usage: node build.js [--check])`);
  const check = args.includes('--check');

  const artifacts = compile();
  const expected = new Set([...artifacts.keys()].map((n) => `${n}.json`));

  if (check) {
    const problems = [];
    for (const [name, a] of artifacts) {
      const p = path.join(OUT_DIR, `${name}.json`);
      if (!fs.existsSync(p)) problems.push(`out/${name}.json is missing`);
      else if (fs.readFileSync(p, 'utf8') !== a.text) problems.push(`out/${name}.json differs from a fresh build`);
    }
    for (const f of existingArtifacts()) {
      if (!expected.has(f)) problems.push(`out/${f} is stale (no such deployable contract)`);
    }
    if (problems.length > 0) {
      for (const p of problems) process.stderr.write(`${p}\n`);
      fail('artifacts are out of date: run `npm run build` in contracts/ and commit out/');
    }
    for (const [name, a] of artifacts) {
      process.stdout.write(`ok out/${name}.json (deployed ${a.deployedSize} bytes)\n`);
    }
    return;
  }

  fs.mkdirSync(OUT_DIR, { recursive: true });
  for (const f of existingArtifacts()) {
    if (!expected.has(f)) {
      fs.unlinkSync(path.join(OUT_DIR, f));
      process.stdout.write(`removed stale out/${f}\n`);
    }
  }
  for (const [name, a] of artifacts) {
    fs.writeFileSync(path.join(OUT_DIR, `${name}.json`), a.text);
    process.stdout.write(
      `wrote out/${name}.json (deployed ${a.deployedSize} bytes, init ${a.initSize} bytes)\n`,
    );
  }
}

main();
