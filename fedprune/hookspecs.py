"""The plugin contract: every hook fedprune calls, with what it is for and an example.

Two kinds of hooks:

* **Registration hooks** (``fedprune_methods``, ``fedprune_pruning_criteria``, ...) return an
  iterable of `fedprune.Component` or `fedprune.Method` records. The host collects them once,
  refuses duplicate names (naming both plugins) and resolves names by lookup. They take no
  arguments and must not have side effects.
* **Lifecycle hooks** (``fedprune_bench_start`` ... ``fedprune_bench_end``) are observers: the
  MLflow tracker and the progress display are plugins of them. Their return values are ignored
  and nothing that changes results may depend on them or on their call order.

Objects passed to lifecycle hooks are described in `fedprune.engine.events`.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("fedprune")


# --------------------------------------------------------------------------- registration hooks


@hookspec
def fedprune_methods():
    """Register methods: recipes naming a component for each slot.

    Example::

        @fedprune.hookimpl
        def fedprune_methods():
            return [fedprune.Method(
                "rigl_fl", "RigL-style dynamic sparse FL",
                adjust="server", pruning_criterion="magnitude",
                growth_criterion="gradient", schedule="cosine")]
    """


@hookspec
def fedprune_pruning_criteria():
    """Register pruning criteria: which active weights to remove.

    The factory's keyword arguments are the criterion's options. The built object has
    ``scores(weight, grad) -> Tensor`` (same shape as ``weight``; the lowest-scoring active
    weights are pruned). ``grad`` is the dense gradient of one mini-batch where the adjustment
    runs on the client, and ``None`` on the server (which re-prunes every sparse method's voted
    masks to their target size).

    Example::

        class Taylor:
            def scores(self, weight, grad):
                if grad is None:  # on the server: no gradient
                    return weight.abs()
                return (weight * grad).abs()

        @fedprune.hookimpl
        def fedprune_pruning_criteria():
            return [fedprune.Component("taylor", Taylor, "|w * dL/dw|")]
    """


@hookspec
def fedprune_growth_criteria():
    """Register growth criteria: which inactive positions to bring back.

    The built object has ``scores(weights, grads) -> dict[name, Tensor]`` (the inactive positions
    of largest ``|score|`` are grown, at value 0; signed scores such as gradients are summed
    across clients before ranking), where ``grads`` holds the dense gradient of one
    mini-batch with respect to each layer's effective weight. Optional methods:
    ``begin(params)`` before local training and ``after_backward(params)`` after every local
    step (dense gradients available, before masking), for criteria that accumulate.
    ``uses_gradient`` (bool attribute, default True): False spares the engine the extra
    mini-batch gradient in server-side adjustment. ``upload_topk`` (bool attribute, default
    False): in server-side adjustment, clients upload only
    the top-k scores among inactive positions instead of the dense score tensor.

    Example::

        class GradientGrowth:
            def scores(self, weights, grads):
                return dict(grads)

        @fedprune.hookimpl
        def fedprune_growth_criteria():
            return [fedprune.Component("gradient", GradientGrowth, "RigL: |dL/dw|")]
    """


@hookspec
def fedprune_regularizers():
    """Register regularizers: a penalty added to the local training loss.

    The built object has ``penalty(model) -> Tensor | None``. Optional: ``begin(ctx)`` before
    local training (``ctx`` is a `fedprune.engine.events.ClientContext`, with the masks, the
    round's adjustment plan and the pruning criterion) and ``learning_rate(step, total_steps,
    base_lr) -> float`` to set the step's learning rate.

    Example::

        class L2:
            def __init__(self, weight_decay=1e-4):
                self.wd = weight_decay
            def penalty(self, model):
                return self.wd * sum(p.pow(2).sum() for p in model.parameters())

        @fedprune.hookimpl
        def fedprune_regularizers():
            return [fedprune.Component("l2", L2, "plain L2 penalty")]
    """


@hookspec
def fedprune_activation_compressors():
    """Register activation compressors: change what a model keeps for backward.

    The built object has ``apply(model) -> None`` and replaces or wraps modules in place. It
    runs after the model transforms, before masks are made; it must keep the parameters (same
    `Parameter` objects), so masks and initial weights are unaffected.

    Example::

        @fedprune.hookimpl
        def fedprune_activation_compressors():
            return [fedprune.Component("sap", SAP, "keep the top (1 - gamma) of conv inputs")]
    """


@hookspec
def fedprune_model_transforms():
    """Register model transforms: change a model's architecture before training (e.g. NSConv).

    The built object has ``apply(model) -> None``. It must reuse the existing weight
    parameters so every method starts from the same initial weights. A module that needs its
    mask declares a ``weight_mask`` attribute; the engine keeps it set to the current mask.

    Example::

        @fedprune.hookimpl
        def fedprune_model_transforms():
            return [fedprune.Component("nsconv", NSConv, "BatchNorm-free standardised convs")]
    """


@hookspec
def fedprune_schedules():
    """Register adjustment schedules: in which rounds masks change, and by how much.

    The built object has ``fraction(round, total_rounds) -> float``: the share of each layer's
    active weights to prune and regrow in that round (0: not an adjustment round).

    Example::

        class Every10:
            def fraction(self, round, total_rounds):
                return 0.2 if round % 10 == 0 else 0.0

        @fedprune.hookimpl
        def fedprune_schedules():
            return [fedprune.Component("every10", Every10, "20% every 10 rounds")]
    """


@hookspec
def fedprune_mask_policies():
    """Register mask policies: a server-side rule that replaces the fixed-count prune-and-grow
    of server-adjusting methods (e.g. PruneFL's adaptive model size).

    The built object has ``update(masks, weights, scores, counts, round, total_rounds) ->
    masks`` (all layers at once: an objective may trade layers off; ``scores`` are the averaged
    growth scores, ``counts`` the schedule's per-layer budget). Optional:
    ``initial(model, masks, data, client_indices, config, generator) -> masks`` to refine the
    initial masks on the server before round 1 (``data``: the training set; the policy may use
    one client's samples). ``initial`` sees the unmasked initial weights (it may start from the
    dense model); the engine applies the masks it returns. The density of the global masks
    follows whatever the policy returns.

    Example::

        class KeepSize:
            def update(self, masks, weights, scores, counts, round, total_rounds):
                return masks

        @fedprune.hookimpl
        def fedprune_mask_policies():
            return [fedprune.Component("keep", KeepSize, "never change the mask")]
    """


@hookspec
def fedprune_datasets():
    """Register datasets: ``factory(root=None, **options) -> fedprune.data.DatasetSplits``.

    Example::

        @fedprune.hookimpl
        def fedprune_datasets():
            return [fedprune.Component("digits", load_digits, "scikit-learn's 8x8 digits")]
    """


@hookspec
def fedprune_models():
    """Register models: ``factory(num_classes, input_shape, **options) -> torch.nn.Module``.

    Example::

        @fedprune.hookimpl
        def fedprune_models():
            return [fedprune.Component("cnn", SmallCNN, "3 conv layers and a classifier")]
    """


@hookspec
def fedprune_partitioners():
    """Register partitioners: ``factory(**options)`` builds an object with
    ``split(labels, num_clients, generator) -> list[numpy.ndarray]`` (indices per client; every
    sample in exactly one client).

    Example::

        @fedprune.hookimpl
        def fedprune_partitioners():
            return [fedprune.Component("iid", IID, "uniformly random, equal sizes")]
    """


# ------------------------------------------------------------------------------ lifecycle hooks


@hookspec
def fedprune_bench_start(bench):
    """A bench begins. ``bench`` is a `fedprune.engine.events.BenchInfo`.

    Example::

        @fedprune.hookimpl
        def fedprune_bench_start(bench):
            print("comparing", ", ".join(bench.methods))
    """


@hookspec
def fedprune_run_start(run):
    """One (method, seed) run begins. ``run`` is a `fedprune.engine.events.RunInfo`.

    Example::

        @fedprune.hookimpl
        def fedprune_run_start(run):
            print(run.method, run.seed, run.config.rounds)
    """


@hookspec
def fedprune_client_trained(run, round, client):
    """A sampled client finished local training. ``client`` is a
    `fedprune.engine.events.ClientReport` (id, samples, loss, bytes up).

    Example::

        @fedprune.hookimpl
        def fedprune_client_trained(run, round, client):
            losses.append(client.loss)
    """


@hookspec
def fedprune_masks_updated(run, round, masks):
    """The global masks changed in ``round`` (``masks``: name -> bool tensor; read only).

    Example::

        @fedprune.hookimpl
        def fedprune_masks_updated(run, round, masks):
            print(round, sum(int(m.sum()) for m in masks.values()))
    """


@hookspec
def fedprune_round_end(run, round, metrics):
    """A round finished. ``metrics`` maps names to floats: always ``train_loss``,
    ``upload_bytes``, ``download_bytes`` and ``density``; ``accuracy`` and ``loss`` in evaluated
    rounds.

    Example::

        @fedprune.hookimpl
        def fedprune_round_end(run, round, metrics):
            if "accuracy" in metrics:
                print(round, metrics["accuracy"])
    """


@hookspec
def fedprune_run_end(run, result):
    """A run finished or failed. ``result`` is the run's results.json object (a dict);
    ``result["status"]`` is ``"ok"`` or ``"failed"``.

    Example::

        @fedprune.hookimpl
        def fedprune_run_end(run, result):
            print(run.method, result["status"], result.get("final_accuracy"))
    """


@hookspec
def fedprune_bench_end(bench, results):
    """A bench finished; ``results`` is the list written to results.json.

    Example::

        @fedprune.hookimpl
        def fedprune_bench_end(bench, results):
            print(sum(r["status"] == "ok" for r in results), "runs succeeded")
    """
