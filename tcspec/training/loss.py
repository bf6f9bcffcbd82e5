"""A dictionary's training loss and its gradients, written out by hand.

Loss of one member on a batch of B tokens, x [B, d_in], y [B, d_out] (y = x for an SAE):

    e     = y_hat - y                                              [B, d_out]
    rec   = squared_error:  (1/B) sum_b sum_j e_bj^2                (paper: ||y - y_hat||^2)
            normalized_mse: (1/(B d_out)) sum_b sum_j e_bj^2 / ||y_b||_2   (released code)
    l1    = lambda_t * (1/B) sum_b sum_i |z_bi|      lambda_t = l1 * min(1, (t+1)/l1_warmup)
    loss  = rec + l1 (+ ghost-grad term) (+ aux_k_coef * aux-k term)

The activation's own forward and backward live in its family's module
(`tcspec.dictionaries.families`); the dead-feature terms in `tcspec.training.dead`. `reference_loss` is the same loss through
autograd, which the tests hold the hand-written gradients to.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tcspec.compute.workspace import Workspace
from tcspec.dictionaries.coders import Coder
from tcspec.training import matryoshka
from tcspec.training.dead import DEAD_TERMS, dead_term, dead_term_grads
from tcspec.training.recon import reconstruction


@torch.no_grad()
def loss_and_grads(
    coder: Coder,
    x: Tensor,
    y: Tensor,
    opts,
    l1: float,
    dead_idx: Tensor | None,
    ws: Workspace,
    gemm: torch.dtype | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor]:
    """One member's loss terms and parameter gradients on a batch, without autograd.

    Returns (grads by parameter name, terms {loss, rec, l1, aux} (+ l0_loss, pre_act_loss,
    matryoshka where they apply) as 0-d tensors, the activation's codes (`l1_sum()`,
    `fired(ws)`), e = y_hat - y [B, d_out]); all of these live in `ws` and are overwritten
    by the next call of the same shape. `dead_idx` lists the dead features (long [n_dead]),
    which the dead-feature terms and JumpReLU's pre-activation loss act on. `gemm` is the
    dtype of the dense GEMMs' operands and results (`tcspec.compute.gemm_dtype`; None: the
    coder's): with bfloat16 the [B, S] tensors are bfloat16, the gradients come back in the
    coder's dtype.
    """
    act, B, low = coder.cfg.family.ops, x.shape[0], gemm or coder.W_enc.dtype
    xc, pre = _encode(coder, x, low, ws)  # [B, d_in], [B, S]
    any_dead = dead_idx is not None and len(dead_idx) > 0
    use_dead = opts.dead_features in DEAD_TERMS and any_dead
    use_pre_act = opts.pre_act_coef is not None  # JumpReLU's loss on the dead features
    wants_dead = any_dead and (use_dead or use_pre_act)
    pre_dead = pre.index_select(1, dead_idx).to(x.dtype) if wants_dead else None  # [B, n_dead]
    codes, y_hat = _decode(coder, pre, x, y.shape, opts, ws)
    e = _residual(y_hat, y, ws)  # [B, d_out]
    rec_elem, rec, g = reconstruction(e, y, opts.loss, ws)
    l1_term = codes.l1_sum() * (l1 / B)

    aux, dead = torch.zeros((), dtype=x.dtype, device=x.device), None
    if use_dead:
        aux, gpre_dead, gW_dec_dead = dead_term_grads(
            opts, coder, pre_dead, dead_idx, x, y, e, rec_elem
        )
        dead = (dead_idx, gpre_dead)
    extra = codes.extra_terms()  # e.g. JumpReLU's L0 penalty (its gradient is in `gr`)
    pa = None
    if use_pre_act:
        pa = act.pre_act(coder, pre_dead, dead_idx, opts.pre_act_coef)
        extra["pre_act_loss"] = pa.loss
        if any_dead:  # its d pre joins the dead-feature terms' into the encoder
            dead = (dead_idx, pa.g_pre if dead is None else dead[1] + pa.g_pre)
    gr, g = _coder_grads(coder, codes, e, y, g, l1 / B, xc, dead, opts, extra, ws)
    gr = {k: ws.cast(f"g_{k}", v, x.dtype) for k, v in gr.items()}  # low -> the coder's
    if use_dead:
        gr["W_dec"].index_add_(0, dead_idx, gW_dec_dead)
    if pa is not None:
        pa.add_grads(gr, coder.threshold)
    _output_grads(coder, gr, g, x, ws)
    loss = sum(extra.values(), rec + l1_term + aux)
    terms = {"loss": loss, "rec": rec, "l1": l1_term, "aux": aux} | extra
    return gr, terms, codes, e


def _encode(coder: Coder, x: Tensor, low: torch.dtype, ws: Workspace) -> tuple[Tensor, Tensor]:
    """(xc = x - b_dec [B, d_in] in x's dtype, pre = xc W_enc + b_enc [B, S] in `low`)."""
    xc = torch.sub(x, coder.b_dec, out=ws.get("xc", x.shape))  # [B, d_in]
    pre = torch.addmm(
        ws.cast("b_enc_low", coder.b_enc, low),
        ws.cast("xc_low", xc, low),
        ws.cast("W_enc_low", coder.W_enc, low),
        out=ws.get("z", (x.shape[0], coder.cfg.d_sae), low),
    )  # [B, S]
    return xc, pre


def _decode(coder: Coder, pre: Tensor, x: Tensor, out_shape, opts, ws: Workspace):
    """(the activation's codes, y_hat [B, d_out]: the decoder's output, plus x W_skip for a
    skip transcoder), in the GEMMs' dtype."""
    codes, y_hat = coder.cfg.family.ops.forward(coder, pre, out_shape, ws, opts)
    if coder.cfg.skip:
        y_hat.addmm_(
            ws.cast("x_low", x, y_hat.dtype), ws.cast("W_skip_low", coder.W_skip, y_hat.dtype)
        )
    return codes, y_hat


def _residual(y_hat: Tensor, y: Tensor, ws: Workspace) -> Tensor:
    """e = y_hat - y [B, d_out] in y's dtype; a bfloat16 y_hat is widened first (exactly),
    which is ~3x faster than torch's mixed-dtype sub and the same bits."""
    e = ws.get("e", y.shape, y.dtype)
    if y_hat.dtype == y.dtype:
        return torch.sub(y_hat, y, out=e)
    return e.copy_(y_hat).sub_(y)


def _coder_grads(coder: Coder, codes, e, y, g, l1_b: float, xc, dead, opts, extra, ws):
    """(the activation's parameter gradients (in the GEMMs' dtype), g = d loss / d y_hat
    [B, d_out] summed over the Matryoshka prefixes, whose losses join `extra`)."""
    if not opts.matryoshka:
        return coder.cfg.family.ops.backward(coder, codes, g, l1_b, xc, dead, ws), g
    z = codes.dense(ws)  # [B, S]; the inner prefixes' gradients are dense
    extra["matryoshka"], groups = matryoshka.prefix_terms(coder, z, e, y, g, opts, ws)
    gr = matryoshka.backward(coder, z, groups, l1_b, xc, dead, ws)
    return gr, groups[0][2]


def _output_grads(coder: Coder, gr: dict[str, Tensor], g: Tensor, x: Tensor, ws: Workspace):
    """Add the gradients of b_dec (b_dec_out) and W_skip to `gr`, from g = d loss / d y_hat
    [B, d_out] (summed over the Matryoshka prefixes) and the encoder's b_enc gradient."""
    cfg = coder.cfg
    g_out = g.sum(0)  # [d_out]
    gr["b_dec"] = torch.mv(coder.W_enc, gr["b_enc"], out=ws.get("gb_dec", (cfg.d_in,))).neg_()
    if cfg.tied_bias:
        gr["b_dec"] += g_out
    else:
        gr["b_dec_out"] = g_out
    if cfg.skip:
        gr["W_skip"] = torch.mm(x.t(), g, out=ws.get("gW_skip", coder.W_skip.shape))


def reference_loss(
    coder: Coder,
    x: Tensor,
    y: Tensor,
    opts,
    l1: float,
    dead: Tensor | None,
    log_threshold: Tensor | None = None,
):
    """The loss with autograd through `coder` (slow; the formula `loss_and_grads` follows).

    Returns a dict of scalar tensors: loss, rec, l1, aux (and l0_loss, pre_act_loss when
    set, for JumpReLU, whose threshold is exp(`log_threshold`), default log(coder.threshold)).
    `dead` is a bool mask [d_sae].
    """
    pre = coder.pre_acts(x)  # [B, d_sae]
    B = x.shape[0]
    z, extra = coder.cfg.family.ops.reference(coder, pre, opts, dead, log_threshold)
    e = coder.decode(z, x) - y  # [B, d_out]
    if opts.loss == "squared_error":
        rec_elem = e.square()
        rec = rec_elem.sum() / B
    else:
        rec_elem = e.square() / y.norm(dim=1, keepdim=True)
        rec = rec_elem.mean()
    l1_term = l1 * z.abs().sum() / B
    if opts.matryoshka:
        inner = matryoshka.widths(opts, coder.cfg.d_sae)[:-1]
        prefix = [_rec(coder.decode(z * (torch.arange(z.shape[1]) < w), x) - y, y, opts.loss)
                  for w in inner]  # fmt: skip
        extra["matryoshka"] = sum(prefix)
    aux = torch.zeros((), dtype=x.dtype)
    if dead is not None and dead.any() and opts.dead_features in DEAD_TERMS:
        W_dead = coder.W_dec[dead]
        aux = dead_term(
            opts, coder.cfg.d_out, pre[:, dead], W_dead, x, y, e.detach(), rec_elem.detach()
        )
    loss = rec + l1_term + aux + sum(extra.values())
    return {"loss": loss, "rec": rec, "l1": l1_term, "aux": aux} | extra


def _rec(e: Tensor, y: Tensor, loss: str) -> Tensor:
    if loss == "squared_error":
        return e.square().sum() / e.shape[0]
    return (e.square() / y.norm(dim=1, keepdim=True)).mean()


def remove_parallel_grad(grad: Tensor, W_dec: Tensor, ws: Workspace) -> None:
    """grad_i -= (grad_i . w_i / w_i . w_i) w_i for each decoder row w_i, in place; the
    products [S, d_out] in `ws`'s flat "prod" buffer."""
    prod = ws.flat("prod", grad.shape, grad.dtype)
    dot = torch.mul(grad, W_dec, out=prod).sum(1, keepdim=True)  # [S, 1]
    coef = dot / torch.mul(W_dec, W_dec, out=prod).sum(1, keepdim=True)  # [S, 1]
    grad.addcmul_(W_dec, coef, value=-1.0)
