#!/usr/bin/env node
// ort_run.js - run an ONNX model with ONNX Runtime (npm onnxruntime-node), the
// reference runtime of nibble's whole-model checks and benchmarks.
//
//   node ort_run.js run  MODEL [--input [NAME=]FILE]... [--output-dir DIR] [--threads N]
//   node ort_run.js time MODEL [--input [NAME=]FILE]... [--threads N] [--warmup W] [--runs N]
//                        [--profile PREFIX]  (ONNX Runtime's JSON trace of every node run)
//   node ort_run.js info MODEL
//   node ort_run.js batch JOBS [--threads N]
//
// Inputs are NumPy .npy files or ONNX TensorProto .pb files (as in the ONNX
// test data). An input without NAME= is bound to the model inputs in order.
// `run` writes each output as DIR/<output name>.npy (characters other than
// [A-Za-z0-9_.-] in the name become '_') and prints one line per output.
// `time` runs W warmup runs and N timed runs and prints one JSON line
// {"ort_version", "threads", "runs", "median_ms", "min_ms", "mean_ms"}.
// `batch` runs many models in one process: JOBS has one job a line, fields
// separated by tabs: MODEL, OUTDIR, then the input files (bound in order);
// outputs go to OUTDIR/out_<i>.npy (i the output's index) and each job prints
// "OK MODEL" or "ERR MODEL: message" (a failed job does not stop the batch).
// Exit status: 0 success, 1 the run failed, 2 bad usage or bad input.
'use strict';

const fs = require('fs');
const path = require('path');

// NBL_ORT_MODULE: another onnxruntime-node to load (the path of its package
// folder), to check a model against another ONNX Runtime version.
let ort;
try {
  ort = require(process.env.NBL_ORT_MODULE || 'onnxruntime-node');
} catch (e) {
  process.stderr.write('ort_run.js: onnxruntime-node is not installed ' +
                       '(npm install --ignore-scripts onnxruntime-node)\n');
  process.exit(2);
}

class UsageError extends Error {}

// ---------------------------------------------------------------- .npy files

const NPY_TYPES = {
  '<f4': ['float32', Float32Array], '<f8': ['float64', Float64Array],
  '|i1': ['int8', Int8Array], '|u1': ['uint8', Uint8Array],
  '<i2': ['int16', Int16Array], '<u2': ['uint16', Uint16Array],
  '<i4': ['int32', Int32Array], '<u4': ['uint32', Uint32Array],
  '<i8': ['int64', BigInt64Array], '<u8': ['uint64', BigUint64Array],
  '|b1': ['bool', Uint8Array], '<f2': ['float16', Uint16Array],
};

function typedFromBytes(Ctor, buf, offset, count) {
  // Copy so the typed array is aligned regardless of the header length.
  const bytes = buf.subarray(offset, offset + count * Ctor.BYTES_PER_ELEMENT);
  if (bytes.length !== count * Ctor.BYTES_PER_ELEMENT) {
    throw new UsageError('data is shorter than its shape says');
  }
  const out = new Ctor(count);
  new Uint8Array(out.buffer).set(bytes);
  return out;
}

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.length < 10 || buf[0] !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY') {
    throw new UsageError(`${file}: not a .npy file`);
  }
  const major = buf[6];
  let hlen, hstart;
  if (major === 1) { hlen = buf.readUInt16LE(8); hstart = 10; }
  else { hlen = buf.readUInt32LE(8); hstart = 12; }
  const header = buf.toString('latin1', hstart, hstart + hlen);
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw new UsageError(`${file}: bad .npy header`);
  if (fortran[1] === 'True') throw new UsageError(`${file}: Fortran-order .npy is not supported`);
  let d = descr[1];
  if (d === '=f4') d = '<f4';
  const t = NPY_TYPES[d];
  if (!t) throw new UsageError(`${file}: unsupported .npy dtype ${descr[1]}`);
  const dims = shape[1].split(',').map((s) => s.trim()).filter((s) => s.length).map(Number);
  const count = dims.reduce((a, b) => a * b, 1);
  let data = typedFromBytes(t[1], buf, hstart + hlen, count);
  if (t[0] === 'bool') data = Uint8Array.from(data, (v) => (v ? 1 : 0));
  return new ort.Tensor(t[0], data, dims);
}

function writeNpy(file, tensor) {
  let descr = null;
  for (const [k, v] of Object.entries(NPY_TYPES)) if (v[0] === tensor.type) descr = k;
  if (!descr) throw new Error(`output type ${tensor.type} cannot be written as .npy`);
  const dims = tensor.dims;
  const shape = dims.length === 0 ? '()' : dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += ' '.repeat(pad % 64) + '\n';
  const pre = Buffer.alloc(10);
  pre[0] = 0x93; pre.write('NUMPY', 1, 'latin1'); pre[6] = 1; pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  const d = tensor.data;
  const body = Buffer.from(d.buffer, d.byteOffset, d.byteLength);
  fs.writeFileSync(file, Buffer.concat([pre, Buffer.from(header, 'latin1'), body]));
}

// -------------------------------------------------- ONNX TensorProto (.pb)

// TensorProto.DataType -> [ort type, typed array, bytes per element]
const PB_TYPES = {
  1: ['float32', Float32Array], 2: ['uint8', Uint8Array], 3: ['int8', Int8Array],
  4: ['uint16', Uint16Array], 5: ['int16', Int16Array], 6: ['int32', Int32Array],
  7: ['int64', BigInt64Array], 9: ['bool', Uint8Array], 10: ['float16', Uint16Array],
  11: ['float64', Float64Array], 12: ['uint32', Uint32Array], 13: ['uint64', BigUint64Array],
};

function pbReader(buf) {
  let pos = 0;
  const varint = () => {
    let result = 0n, shift = 0n;
    for (;;) {
      if (pos >= buf.length) throw new UsageError('truncated varint');
      const b = buf[pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return result;
      shift += 7n;
      if (shift > 70n) throw new UsageError('varint too long');
    }
  };
  return {
    done: () => pos >= buf.length,
    varint,
    bytes: () => {
      const n = Number(varint());
      if (pos + n > buf.length) throw new UsageError('truncated field');
      const b = buf.subarray(pos, pos + n); pos += n; return b;
    },
    fixed: (n) => {
      if (pos + n > buf.length) throw new UsageError('truncated field');
      const b = buf.subarray(pos, pos + n); pos += n; return b;
    },
  };
}

function readPb(file) {
  const buf = fs.readFileSync(file);
  const r = pbReader(buf);
  const dims = [];
  let dtype = 0, raw = null, name = '';
  const vals = { f: [], i32: [], i64: [], d: [], u64: [] };
  try {
    while (!r.done()) {
      const key = Number(r.varint());
      const field = key >>> 3, wire = key & 7;
      const packedVarints = (arr, signed) => {
        if (wire === 2) {
          const sub = pbReader(r.bytes());
          while (!sub.done()) arr.push(signed ? BigInt.asIntN(64, sub.varint()) : sub.varint());
        } else arr.push(signed ? BigInt.asIntN(64, r.varint()) : r.varint());
      };
      const packedFixed = (arr, size, get) => {
        const b = wire === 2 ? r.bytes() : r.fixed(size);
        const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
        for (let o = 0; o + size <= b.length; o += size) arr.push(get(dv, o));
      };
      if (field === 1) packedVarints(dims, true);
      else if (field === 2) dtype = Number(r.varint());
      else if (field === 4) packedFixed(vals.f, 4, (dv, o) => dv.getFloat32(o, true));
      else if (field === 5) packedVarints(vals.i32, true);
      else if (field === 7) packedVarints(vals.i64, true);
      else if (field === 8) name = r.bytes().toString('utf8');
      else if (field === 9) raw = r.bytes();
      else if (field === 10) packedFixed(vals.d, 8, (dv, o) => dv.getFloat64(o, true));
      else if (field === 11) packedVarints(vals.u64, false);
      else if (field === 14) {
        if (Number(r.varint()) === 1) throw new UsageError('external data is not supported');
      } else if (wire === 0) r.varint();
      else if (wire === 1) r.fixed(8);
      else if (wire === 2) r.bytes();
      else if (wire === 5) r.fixed(4);
      else throw new UsageError(`unsupported wire type ${wire}`);
    }
  } catch (e) {
    if (e instanceof UsageError) throw new UsageError(`${file}: ${e.message}`);
    throw e;
  }
  const t = PB_TYPES[dtype];
  if (!t) throw new UsageError(`${file}: unsupported TensorProto data_type ${dtype}`);
  const shape = dims.map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  let data;
  if (raw) data = typedFromBytes(t[1], raw, 0, count);
  else {
    let src;
    if (dtype === 1) src = vals.f;
    else if (dtype === 11) src = vals.d;
    else if (dtype === 7) src = vals.i64;
    else if (dtype === 12 || dtype === 13) src = vals.u64;
    else src = vals.i32; // int8/16/32, uint8/16, bool, float16 bits
    if (src.length !== count) {
      throw new UsageError(`${file}: ${src.length} values for shape [${shape}]`);
    }
    data = new t[1](count);
    for (let i = 0; i < count; i++) {
      data[i] = (t[1] === BigInt64Array || t[1] === BigUint64Array) ? BigInt(src[i]) : Number(src[i]);
    }
  }
  return { name, tensor: new ort.Tensor(t[0], data, shape) };
}

function readTensor(file) {
  if (file.endsWith('.npy')) return { name: '', tensor: readNpy(file) };
  if (file.endsWith('.pb')) return readPb(file);
  throw new UsageError(`${file}: expected a .npy or .pb file`);
}

// ---------------------------------------------------------------- commands

function parseArgs(argv) {
  const opt = { inputs: [], outputDir: null, threads: 1, warmup: 5, runs: 20, model: null };
  const intArg = (flag, v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new UsageError(`${flag}: expected a count, got '${v}'`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new UsageError(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--input' || a === '-i') opt.inputs.push(next());
    else if (a === '--output-dir' || a === '-o') opt.outputDir = next();
    else if (a === '--threads') opt.threads = intArg(a, next());
    else if (a === '--warmup') opt.warmup = intArg(a, next());
    else if (a === '--runs' || a === '--repeat') opt.runs = Math.max(1, intArg(a, next()));
    else if (a === '--profile') opt.profile = next();
    else if (a.startsWith('-')) throw new UsageError(`unknown option ${a}`);
    else if (opt.model === null) opt.model = a;
    else throw new UsageError(`unexpected argument ${a}`);
  }
  if (!opt.model) throw new UsageError('no MODEL given');
  return opt;
}

async function openSession(opt) {
  if (!fs.existsSync(opt.model)) throw new UsageError(`${opt.model}: no such file`);
  return ort.InferenceSession.create(opt.model, {
    intraOpNumThreads: opt.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    ...(opt.profile ? { enableProfiling: true, profileFilePrefix: opt.profile } : {}),
  });
}

function bindInputs(session, opt) {
  const feeds = {};
  let positional = 0;
  for (const spec of opt.inputs) {
    const eq = spec.indexOf('=');
    let name = eq > 0 ? spec.slice(0, eq) : null;
    const file = eq > 0 ? spec.slice(eq + 1) : spec;
    const t = readTensor(file);
    if (name === null) {
      if (positional >= session.inputNames.length) {
        throw new UsageError(`${file}: model has only ${session.inputNames.length} inputs`);
      }
      name = session.inputNames[positional++];
    }
    if (!session.inputNames.includes(name)) {
      throw new UsageError(`${opt.model}: no input named '${name}' (inputs: ${session.inputNames.join(', ')})`);
    }
    feeds[name] = t.tensor;
  }
  for (const n of session.inputNames) {
    if (!(n in feeds)) throw new UsageError(`${opt.model}: input '${n}' not given (--input ${n}=FILE)`);
  }
  return feeds;
}

function safeName(n) { return n.replace(/[^A-Za-z0-9_.-]/g, '_'); }

async function cmdRun(opt) {
  const session = await openSession(opt);
  const feeds = bindInputs(session, opt);
  const out = await session.run(feeds);
  if (opt.outputDir) fs.mkdirSync(opt.outputDir, { recursive: true });
  for (const name of session.outputNames) {
    const t = out[name];
    let line = `${name}: ${t.type} [${t.dims.join(',')}]`;
    if (opt.outputDir) {
      const f = path.join(opt.outputDir, safeName(name) + '.npy');
      writeNpy(f, t);
      line += ` -> ${f}`;
    }
    console.log(line);
  }
}

async function cmdTime(opt) {
  const session = await openSession(opt);
  const feeds = bindInputs(session, opt);
  for (let i = 0; i < opt.warmup; i++) await session.run(feeds);
  const ms = [];
  for (let i = 0; i < opt.runs; i++) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  if (opt.profile) session.endProfiling();
  const sorted = [...ms].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  const mean = ms.reduce((a, b) => a + b, 0) / ms.length;
  console.log(JSON.stringify({
    ort_version: ort.env.versions.common, threads: opt.threads, runs: opt.runs,
    median_ms: +median.toFixed(3), min_ms: +sorted[0].toFixed(3), mean_ms: +mean.toFixed(3),
  }));
}

async function cmdInfo(opt) {
  const session = await openSession(opt);
  console.log(JSON.stringify({ ort_version: ort.env.versions.common,
                               inputs: session.inputNames, outputs: session.outputNames }));
}

async function cmdBatch(opt) {
  const lines = fs.readFileSync(opt.model, 'utf8').split('\n').filter((l) => l.trim());
  for (const line of lines) {
    const [model, outDir, ...inputs] = line.split('\t');
    try {
      const session = await openSession({ ...opt, model });
      const feeds = bindInputs(session, { model, inputs });
      const out = await session.run(feeds);
      fs.mkdirSync(outDir, { recursive: true });
      session.outputNames.forEach((name, i) => writeNpy(path.join(outDir, `out_${i}.npy`), out[name]));
      console.log(`OK ${model}`);
    } catch (e) {
      console.log(`ERR ${model}: ${String((e && e.message) || e).split('\n')[0]}`);
    }
  }
}

async function main() {
  const [cmd, ...rest] = process.argv.slice(2);
  const cmds = { run: cmdRun, time: cmdTime, info: cmdInfo, batch: cmdBatch };
  if (!cmds[cmd]) {
    throw new UsageError('usage: ort_run.js run|time|info MODEL [--input [NAME=]FILE]... ' +
                         '[--output-dir DIR] [--threads N] [--warmup W] [--runs N]\n' +
                         '       ort_run.js batch JOBS [--threads N]');
  }
  await cmds[cmd](parseArgs(rest));
}

main().then(() => process.exit(0), (e) => {
  process.stderr.write(`ort_run.js: ${e instanceof UsageError ? e.message : (e && e.stack) || e}\n`);
  process.exit(e instanceof UsageError ? 2 : 1);
});
