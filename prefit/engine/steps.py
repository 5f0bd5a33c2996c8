"""The batched steps: one epoch's forward and backward of every member of a chunk. `GenericStep` runs any family by
autograd (`torch.func`), compiled by `torch.compile` on a CPU; the SIREN's own, with a hand-written backward, are
`SirenStep` in torch ops on any device, `CpuStep` compiled (`prefit.kernels`) and on CUDA
`prefit.engine.cuda.FusedStep`, all with the same arithmetic."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.func import functional_call, grad_and_value, vmap

from prefit.errors import one_line
from prefit.model import Field, FieldNet, Params, member_params

log = logging.getLogger(__name__)

# Forms of the compiled generic step one process keeps (torch._dynamo's `recompile_limit`, 8 by default): one per
# chunk shape and network, so a sweep of many cells in one process would otherwise fall back to the eager step.
COMPILED_FORMS = 256


class SirenStep:
    """Forward and hand-written backward of stacked SIRENs, in buffers allocated once per chunk (not faulted in anew).

    Forward: s_l = a_{l-1} (w0 W_l) + w0 b_l, a_l = sin(s_l), y = a_L W + b. Backward: dy = 2 (y - t) / (pixels * 3);
    g = da * cos(s_l); dW_l = w0 a_{l-1}^T g, db_l = w0 sum over pixels of g, da_{l-1} = g (w0 W_l)^T. The last layer
    is computed transposed, [3, pixels] per member: a product with 3 columns runs several times slower than 3 rows.
    """

    def __init__(self, params: Params, coords: torch.Tensor, target: torch.Tensor, w0: float):
        members, pixels = target.shape[0], target.shape[1]
        like = params[0][0]
        self.params = [(w.clone(), b.clone()) for w, b in params]  # its own copy, updated in place by the optimiser
        self.w0 = w0
        self.scale = 2.0 / (pixels * target.shape[2])
        self.coords = coords.to(like).expand(members, pixels, coords.shape[1]).contiguous()
        self.target_t = target.transpose(1, 2).contiguous()  # [M, 3, pixels]
        widths = [w.shape[2] for w, _ in params[:-1]]
        self.scaled = [torch.empty_like(w) for w, _ in params[:-1]]  # w0 W
        self.scaled_bias = [torch.empty_like(b) for _, b in params[:-1]]  # w0 b
        self.sines = [like.new_empty(members, pixels, h) for h in widths]
        self.cosines = [like.new_empty(members, pixels, h) for h in widths]
        self.back = [like.new_empty(members, pixels, widths[0]) for _ in range(2)]  # all sine layers are hfs wide
        self.pred_t = like.new_empty(members, 3, pixels)
        self.residual_t = like.new_empty(members, 3, pixels)
        self.grads: Params = [(torch.empty_like(w), torch.empty_like(b)) for w, b in params[:-1]]
        w, b = params[-1]
        self.last_grad_t = like.new_empty(members, w.shape[2], w.shape[1])  # the product's layout, [M, 3, hfs]
        self.grads.append((torch.empty_like(w), torch.empty_like(b)))

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, Params]:
        """Per-member loss [M], predictions [M, pixels, 3] before the update, and the gradients: workspace views,
        overwritten by the next call."""
        params, w0 = self.params, self.w0
        x = self.coords
        for (w, b), ws, bs, s, c in zip(params[:-1], self.scaled, self.scaled_bias, self.sines, self.cosines):
            torch.mul(w, w0, out=ws)
            torch.mul(b, w0, out=bs)
            torch.bmm(x, ws, out=s)
            s.add_(bs)
            torch.cos(s, out=c)
            s.sin_()
            x = s
        w, b = params[-1]
        torch.bmm(w.transpose(1, 2), x.transpose(1, 2), out=self.pred_t).add_(b.transpose(1, 2))
        residual = torch.sub(self.pred_t, self.target_t, out=self.residual_t)
        flat = residual.view(residual.shape[0], -1)
        loss = torch.linalg.vecdot(flat, flat) / flat.shape[1]
        grad_t = residual.mul_(self.scale)  # dy, transposed [M, 3, pixels]
        gw, gb = self.grads[-1]
        gw.copy_(torch.bmm(grad_t, x, out=self.last_grad_t).transpose(1, 2))
        torch.sum(grad_t, dim=2, out=gb.view(gb.shape[0], -1))
        grad = torch.bmm(grad_t.transpose(1, 2), w.transpose(1, 2), out=self.back[0])
        for layer in range(len(params) - 2, -1, -1):
            gw, gb = self.grads[layer]
            grad.mul_(self.cosines[layer])
            inputs = self.coords if layer == 0 else self.sines[layer - 1]
            torch.bmm(inputs.transpose(1, 2), grad, out=gw).mul_(w0)
            torch.sum(grad, dim=1, keepdim=True, out=gb).mul_(w0)
            if layer > 0:
                ws = self.scaled[layer]
                free = self.back[1] if grad.data_ptr() == self.back[0].data_ptr() else self.back[0]
                grad = torch.bmm(grad, ws.transpose(1, 2), out=free)
        return loss, self.pred_t.transpose(1, 2), self.grads


class CpuStep:
    """SirenStep compiled for a CPU (`prefit.kernels.siren_step`), owning the parameters in the kernel's layout (hidden
    layers stacked [hls, M, hfs, hfs]); `params` and the gradients are (W, b) views into them."""

    def __init__(self, params: Params, coords: torch.Tensor, target: torch.Tensor, w0: float):
        from prefit.kernels import siren_step  # numba loads when a CPU step is built, not on `import prefit.engine`

        self.kernel = siren_step
        members, pixels, width = target.shape[0], target.shape[1], params[0][0].shape[2]
        hls = len(params) - 2

        hidden = [torch.stack([p[k] for p in params[1:-1]]) for k in (0, 1)]  # hls >= 1 (config.validate)
        layers = [params[0][0], params[0][1], *hidden, params[-1][0], params[-1][1]]
        self.store = [x.detach().clone(memory_format=torch.contiguous_format) for x in layers]
        self.grad_store = [torch.empty_like(x) for x in self.store]
        self.params = self._pairs(self.store)
        self.grads = self._pairs(self.grad_store)
        self.loss = torch.empty(members)
        self.pred_t = torch.empty(members, 3, pixels)
        f32 = np.float32
        work = (
            np.empty((hls + 1, pixels, width), f32),  # sines
            np.empty((hls + 1, pixels, width), f32),  # cosines
            np.empty((2, pixels, width), f32),  # gradients flowing back
            np.empty((6, width), f32),  # rows: first-layer weights; the last layer's W^T and dW^T
            np.empty(width, f32),  # a layer's w0 b, then its bias gradient
            np.empty((3, pixels), f32),  # residual
        )
        coords = coords.detach().to(torch.float32).contiguous().numpy()
        stored, grads = tuple(x.numpy() for x in self.store), tuple(g.numpy() for g in self.grad_store)
        target_t = target.transpose(1, 2).contiguous().numpy()
        scale = 2.0 / (pixels * target.shape[2])
        self.args = (coords, stored, target_t, float(w0), scale, self.loss.numpy(), self.pred_t.numpy(), grads, work)

    @staticmethod
    def _pairs(store: list[torch.Tensor]) -> Params:
        first_w, first_b, hidden_w, hidden_b, last_w, last_b = store
        return [(first_w, first_b), *zip(hidden_w, hidden_b), (last_w, last_b)]

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, Params]:
        """Loss [M], predictions [M, pixels, 3] before the update, gradients: views overwritten by the next call."""
        self.kernel(*self.args)
        return self.loss, self.pred_t.transpose(1, 2), self.grads


class GenericStep:
    """Any family's step: one member's loss and gradients by autograd through its `FieldNet` (`functional_call` with
    the member's weights), mapped over the chunk's members by `vmap`. A new family needs only its `Field`; the SIREN's
    hand-written steps are tested against this one. With `compile`, the whole step is compiled once per chunk shape
    by `torch.compile` (inductor fuses the activations and their derivatives around the products); where it cannot
    compile (no C++ compiler, say), one warning line and the eager step."""

    def __init__(self, params: Params, inputs: torch.Tensor, target: torch.Tensor, field: Field, compile: bool = False):
        self.params = [(w.clone(), b.clone()) for w, b in params]  # its own copy, updated in place by the optimiser
        self.inputs = inputs.to(params[0][0])
        self.target = target
        net = FieldNet.for_params([(w.cpu(), b.cpu()) for w, b in member_params(params, 0)], field)

        def member(weights: Params, inputs: torch.Tensor, target: torch.Tensor):
            named = {}
            for k, (w, b) in enumerate(weights):
                named[f"layers.{k}.weight"], named[f"layers.{k}.bias"] = w.T, b[0]
            pred = functional_call(net, named, (inputs,))
            return torch.mean((pred - target) ** 2), pred

        self.grads = vmap(grad_and_value(member, has_aux=True), in_dims=(0, None, 0))
        self.compiled = compile and self._compile()

    def _compile(self) -> bool:
        """Replace `grads` by its compiled form, tried once here (outside any timing); whether it compiled."""
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILED_FORMS)
        compiled = torch.compile(self.grads, dynamic=False, fullgraph=True)
        try:
            compiled(self.params, self.inputs, self.target)
        except Exception as error:  # inductor's failures have no common type
            log.warning("the generic step runs eagerly: torch.compile failed (%s)", one_line(error, 300))
            return False
        self.grads = compiled
        return True

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, Params]:
        """Per-member loss [M], predictions [M, pixels, channels] before the update, and the gradients."""
        grads, (loss, pred) = self.grads(self.params, self.inputs, self.target)
        return loss, pred, [(gw.contiguous(), gb.contiguous()) for gw, gb in grads]
