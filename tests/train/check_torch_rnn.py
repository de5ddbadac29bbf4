#!/usr/bin/python3
"""check_torch_rnn.py - `nibble train` on recurrent models (the LSTM, GRU
and RNN gradient rules: ai.nibble LSTMGrad / GRUGrad / RNNGrad) against
PyTorch on the same run.

Sequence classifiers (an LSTM with two layers; a bidirectional GRU, which
PyTorch exports with linear_before_reset=1; a tanh RNN), each reading
[batch, 6 steps, 4 features] and classifying from the last step's output
through a Linear, are exported by torch.onnx.export at opset 14, trained by
`nibble train` with plain SGD (constant rate, batch 16, one epoch of an npy
dataset, softmax cross-entropy) and by PyTorch 1.13 from the same initial
weights on the same batches in the same order (nibble's data order,
common.py). Asserted: every step's loss within 1e-4 relative and every
trained parameter of the exported model within 1e-4 of its largest
magnitude; a control run (PyTorch trained with the recurrent layer frozen)
must fail the comparison, so the test can tell.
Exit 0 pass, 1 fail, 77 skip (no torch/onnx/numpy).
"""
import os
import sys

try:
    import numpy as np
    import onnx
    from onnx import numpy_helper
    import torch
    import common
except ImportError as e:
    print("check_torch_rnn: %s: skipped" % e)
    sys.exit(77)

N, T, F, K, B, LR, SEED = 320, 6, 4, 3, 16, 0.3, 5


class Net(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        if kind == "lstm":
            self.rnn = torch.nn.LSTM(F, 5, num_layers=2, batch_first=True)
        elif kind == "gru":
            self.rnn = torch.nn.GRU(F, 5, batch_first=True, bidirectional=True)
        else:
            self.rnn = torch.nn.RNN(F, 5, batch_first=True)
        self.fc = torch.nn.Linear(self.rnn.hidden_size * (2 if self.rnn.bidirectional else 1), K)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1, :])


def torch_run(kind, x, y, state, frozen):
    net = Net(kind)
    net.load_state_dict(state)
    params = [p for n, p in net.named_parameters() if not (frozen and n.startswith("rnn."))]
    return common.torch_sgd_epoch(net, params, x, y, LR, B, SEED), net


def onnx_params(model):
    """The exported model's initializers by name (PyTorch's LSTM/GRU weights
    are re-laid out by the exporter, so the comparison is on the ONNX side)."""
    return {t.name: numpy_helper.to_array(t).copy() for t in onnx.load(model).graph.initializer}


def export(net, path):
    torch.onnx.export(net, torch.zeros(1, T, F), path, opset_version=14, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})


def main():
    torch.set_num_threads(1)
    rc = 0
    tmp = common.tmpdir("nbl_torch_rnn_")
    x, y = common.make_npy_data(os.path.join(tmp, "data"), N, (T, F), K, seed=4)
    for kind in ("lstm", "gru", "rnn"):
        torch.manual_seed(1)
        net = Net(kind)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        model = os.path.join(tmp, kind + ".onnx")
        export(net, model)
        ops = sorted({n.op_type for n in onnx.load(model).graph.node})
        if kind.upper() not in ops:
            print("FAIL: the %s export has %s" % (kind, ops))
            return 1
        out, metrics = os.path.join(tmp, kind + "_out.onnx"), os.path.join(tmp, kind + "_m.csv")
        r, rows, _ = common.nibble_sgd_epoch(model, os.path.join(tmp, "data"), B, LR, SEED, out, metrics)
        if rows is None:
            print("FAIL: nibble train (%s) exited %d: %s" % (kind, r.returncode, r.stderr))
            return 1
        w1 = onnx_params(out)
        for frozen in (False, True):
            losses, tnet = torch_run(kind, x, y, state, frozen)
            ref = os.path.join(tmp, "%s_ref%d.onnx" % (kind, frozen))
            export(tnet, ref)
            w2 = onnx_params(ref)
            if len(rows) != len(losses) or set(w1) != set(w2):
                print("FAIL: %s: %d step rows (PyTorch %d), parameters %s vs %s" % (kind, len(rows), len(losses),
                                                                                  sorted(w1), sorted(w2)))
                return 1
            lw = max(abs(a - b) / abs(b) for a, b in zip(rows, losses))
            pw = max(float(np.max(np.abs(w1[k] - v)) / max(np.max(np.abs(v)), 1e-30)) for k, v in w2.items()
                     if v.dtype == np.float32)
            ok = lw <= 1e-4 and pw <= 1e-4
            what = "control (PyTorch with the recurrent layer frozen)" if frozen else "nibble against PyTorch"
            print("%s %s %s: %d steps, loss %.4f -> %.4f; largest relative loss difference %.2e, parameter "
                  "difference %.2e" % ("ok  " if ok != frozen else "FAIL", kind, what, len(rows), rows[0], rows[-1],
                                       lw, pw))
            if ok == frozen:
                rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(common.cleanup(main()))
