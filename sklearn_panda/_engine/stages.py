"""Split a network, by node name, into a frozen trunk, trainable stages and its classifier.

The network is traced with ``torch.fx`` (torchvision's
:class:`~torchvision.models.feature_extraction.NodePathTracer`, so nodes have
the names :func:`~torchvision.models.feature_extraction.get_graph_node_names`
lists, and a module's name stands for its last node, as in
:func:`~torchvision.models.feature_extraction.create_feature_extractor`). It is
cut after each node of ``stage_ends``: the stages run from the input to the
first stage end, then from each stage end to the next. After the last stage
end come the layers up to ``feature_node`` (pooling, a final norm), which
train with the last stage; a feature map there is average-pooled. By
default the features are the input of the model's classifier (its last
``nn.Linear``, or convolution), and that classifier is the ``head`` for the
Fisher information of EWC.

Each torchvision classifier family has default stage ends
(:func:`~sklearn_panda._engine.families.family_stage_ends`);
any other network needs ``stage_ends``. A cut must leave one tensor that
carries everything forward (not the inside of a residual block); a network
that cannot be split is an error that names the parameters to set, never a
silent fallback.
"""

import inspect
import math
import re

import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn
from torchvision.models.feature_extraction import NodePathTracer

from .families import FamilyStages, family_stage_ends, has_parameters, sequential_stage_ends

SPLIT_PARAMETERS_HINT = (
    "Set stage_ends (the names of the nodes or modules that end each stage, in order; "
    "torchvision.models.feature_extraction.get_graph_node_names(model) lists them) and, "
    "if needed, feature_node (default: the input of the model's last Linear or convolution "
    "layer) and n_trainable_stages. Unadapted features (n_steps=0) need no stage_ends."
)


class FeatureNet(nn.Module):
    """A backbone split into a frozen trunk, trainable stages and a classifier head.

    ``forward(x) == stages(trunk(x))`` returns pooled features ``(n, d)``.

    Parameters
    ----------
    trunk : nn.Module
        Frozen first part.
    stages : nn.Sequential
        Trainable last part: one entry per trainable stage, then a
        :class:`PooledFeatures` that ends in pooled, flattened features.
    head : nn.Module or None
        Maps features to the classifier's logits; ``None`` when there is none.
    expects_images : bool
        Whether input must be ``(n, 3, H, W)`` images.
    model : nn.Module or None
        The unsplit network the parts come from (they share its parameters).
    """

    def __init__(self, trunk, stages, head, *, expects_images, model=None):
        super().__init__()
        self.trunk = trunk
        self.stages = stages
        self.head = head
        self.expects_images = expects_images
        # The network as it was built, unsplit: what save() stores, with names that do not
        # depend on how torch.fx traced it. Not a submodule: its parameters and buffers are
        # the trunk's, stages' and head's own (moved and trained with them), and those
        # past the features are never used.
        object.__setattr__(self, "model", model)
        # What the model was built from, for save(): {"backbone", "weights"} as fit gave them (or
        # {"backbone", "architecture"} for a network rebuilt from a file), and "split", the
        # arguments it was split with, where the builder had them; None when built elsewhere.
        # A later set_params(backbone=..., feature_node=...) changes the estimator's parameters, not this.
        self.built_from = None

    def forward(self, x):
        return self.stages(self.trunk(x))

    def trainable_parameters(self):
        """The parameters adaptation may change: those of ``stages``."""
        return [p for p in self.stages.parameters() if p.requires_grad]

    def freeze_trunk(self):
        """Only ``stages`` train; BatchNorm statistics stay frozen (eval mode), as in the paper."""
        for parameter in self.trunk.parameters():
            parameter.requires_grad_(False)
        if self.head is not None:
            for parameter in self.head.parameters():
                parameter.requires_grad_(False)
        for parameter in self.stages.parameters():
            parameter.requires_grad_(True)
        return self.eval()

    def train(self, mode=True):
        # BatchNorm and dropout stay in eval mode even while the stages train:
        # the paper's recipe freezes the running statistics.
        return super().train(False)


class Trunk(nn.Sequential):
    """The frozen stages, run in order; the first two always in float32.

    Under ``torch.autocast`` (``precision="bfloat16"`` or ``"float16"``) the
    stem and the first block group (ResNet ``layer1``) still run in float32:
    the high-resolution layers are where rounding to bfloat16 moved ROC AUC.
    EfficientNet-Lite0 on four Fashion-MNIST classes, against float32: all in
    bfloat16 +0.13 to +0.49 points; stem in float32 +0.04 to +0.19; stem and
    first group +0.05 to +0.11 (``benchmarks/RESULTS.md``). They are about
    7% of a ResNet152's compute. Without autocast this is ``nn.Sequential``.

    Parameters
    ----------
    *stages : nn.Module
    float32_stages : int, default=2
        How many of the first stages run in float32.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.stages import Trunk
    >>> stem, image = torch.nn.Conv2d(3, 4, 3), torch.ones(1, 3, 8, 8)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     print(stem(image).dtype, Trunk(stem)(image).dtype)
    torch.bfloat16 torch.float32
    """

    def __init__(self, *stages, float32_stages=2):
        super().__init__(*stages)
        self.float32_stages = float32_stages

    def forward(self, x):
        for index, stage in enumerate(self):
            if index < self.float32_stages:
                with torch.autocast(device_type=x.device.type, enabled=False):
                    x = stage(x)
            else:
                x = stage(x)
        return x


class PooledFeatures(nn.Module):
    """The layers from the last stage end to the feature node, then global average pooling.

    Vectors ``(n, d)`` are the features as they are; feature maps
    ``(n, C, H, W)`` are average-pooled to ``(n, C)``.

    Parameters
    ----------
    layers : nn.Module or None
        What runs after the last stage end (``None``: nothing).
    feature_node : str
        The name of the feature node, for error messages.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.stages import PooledFeatures
    >>> PooledFeatures(None, "layer4")(torch.ones(2, 5, 3, 3)).shape
    torch.Size([2, 5])
    """

    def __init__(self, layers, feature_node):
        super().__init__()
        self.layers = layers
        self.feature_node = feature_node

    def forward(self, x):
        if self.layers is not None:
            x = self.layers(x)
        if x.ndim == 4:
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        if x.ndim != 2:
            raise ValueError(
                f"The feature node {self.feature_node!r} gives outputs of shape {tuple(x.shape)}; "
                "features must be vectors (n, d) or feature maps (n, C, H, W), which are "
                "average-pooled. Set feature_node to a node that gives one of them (for tokens, "
                "the class token or the pooled tokens)."
            )
        return x


# ------------------------------------------------------------------ tracing


class _Tracer(NodePathTracer):
    """Traces only through the modules in ``expand``; every other module is one node."""

    def __init__(self, expand):
        super().__init__(autowrap_modules=(math, torchvision.ops))
        self.expand = expand

    def is_leaf_module(self, module, module_qualname):
        return module_qualname not in self.expand

    def _get_node_qualname(self, module_qualname, node):
        if node.op != "call_module":
            return super()._get_node_qualname(module_qualname, node)
        # A module call is named by the module's path, and _1, _2, ... when the
        # module is called again; torchvision's renaming would also drop the
        # "_0" of a name such as "encoder.layers.encoder_layer_0".
        taken = set(self.node_to_qualname.values())
        name, calls = module_qualname, 0
        while name in taken:
            calls += 1
            name = f"{module_qualname}_{calls}"
        return name


def _prefixes(name):
    parts = name.split(".")
    return {".".join(parts[:length]) for length in range(1, len(parts))}


class _Graph:
    """The traced graph of ``model``, with the nodes named in ``names`` visible."""

    def __init__(self, model, names):
        self.model = model
        self.modules = dict(model.named_modules())
        self.expand = set().union(*(_prefixes(name) for name in names)) & set(self.modules)
        self._trace()

    def _trace(self):
        tracer = _Tracer(self.expand)
        try:
            self.graph = tracer.trace(self.model, concrete_args=_other_arguments(self.model))
        except Exception as error:  # torch.fx raises TraceError, TypeError, RuntimeError, ...
            raise ValueError(
                f"Could not trace {type(self.model).__name__} with torch.fx to split it into stages "
                f"({type(error).__name__}: {error}). Stage ends and the feature node must be "
                "where the forward pass has no data-dependent control flow."
            ) from error
        self.names = tracer.node_to_qualname
        self.input = next(node for node in self.graph.nodes if node.op == "placeholder")
        (self.output,) = [node for node in self.graph.nodes if node.op == "output"]
        self.used = _ancestors(self.output)

    def node(self, name, parameter):
        """The node ``name`` (a node name, or a module name for its last node)."""
        pattern = re.compile(rf"{re.escape(name)}(\.|$)")
        found = [node for node in self.graph.nodes if node in self.used and pattern.match(self.names.get(node, ""))]
        if not found:
            shown = [self.names[node] for node in self.graph.nodes if node in self.used and node in self.names]
            raise ValueError(
                f"{parameter}: {type(self.model).__name__} has no node or module {name!r} on its "
                f"path from input to output. Its top-level nodes: {', '.join(shown[:40])}"
                f"{' ...' if len(shown) > 40 else ''}; get_graph_node_names lists the inner ones."
            )
        return found[-1]

    def classifier(self):
        """The last Linear or convolution with nothing that has parameters after it; re-traces into containers."""
        while True:
            calls = [
                node
                for node in self.graph.nodes
                if node in self.used and node.op == "call_module" and has_parameters(self.modules[node.target])
            ]
            if not calls:
                return None, f"{type(self.model).__name__} has no layer with parameters"
            module = self.modules[calls[-1].target]
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                return calls[-1], None
            if not any(has_parameters(child) for child in module.children()):
                return None, (
                    f"its last layer with parameters, {calls[-1].target} ({type(module).__name__}), "
                    "is not a Linear or convolution classifier"
                )
            self.expand.add(calls[-1].target)
            self._trace()

    def name(self, node):
        return self.names.get(node, node.name)


def _other_arguments(model):
    """The forward's arguments after the input, fixed to their defaults for tracing."""
    fixed = {}
    for parameter in list(inspect.signature(model.forward).parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty:
            raise ValueError(
                f"{type(model).__name__}.forward takes another input besides the images or "
                f"vectors ({parameter.name}); a backbone takes one batch."
            )
        fixed[parameter.name] = parameter.default
    return fixed or None


def _reachable(node, neighbours):
    """``node`` and every node reached from it through ``neighbours(node)``."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(neighbours(current))
    return seen


def _ancestors(node):
    return _reachable(node, lambda current: current.all_input_nodes)


def _descendants(node):
    return _reachable(node, lambda current: current.users)


def _segment(graph, start, end, parameter):
    """A module computing ``end`` from the output of ``start`` (``None``: the network's input).

    One module call is that module; a chain of module calls, each on the
    previous one's output, an ``nn.Sequential`` of them (parameter names as
    in the network's own blocks); anything else an ``fx.GraphModule``.
    """
    start = graph.input if start is None else start
    after, from_input = _descendants(start), _descendants(graph.input)
    needed, stack = set(), [end]
    while stack:
        node = stack.pop()
        if node in needed or node is start:
            continue
        # Besides the cut's output, a segment may only read constants (parameters, buffers).
        if node not in after and node in from_input:
            raise ValueError(
                f"The network cannot be cut after {graph.name(start)!r}: the layers up to "
                f"{graph.name(end)!r} also read {graph.name(node)!r}, computed before that cut "
                f"(a skip connection or the input's shape). {parameter} must name points where "
                "one tensor carries everything forward, such as the outputs of whole blocks."
            )
        needed.add(node)
        stack.extend(node.all_input_nodes)
    ordered = [node for node in graph.graph.nodes if node in needed]
    previous, modules = start, []
    for node in ordered:
        if node.op != "call_module" or node.args != (previous,) or node.kwargs:
            break
        modules.append(graph.modules[node.target])
        previous = node
    else:
        return modules[0] if len(modules) == 1 else nn.Sequential(*modules)
    new = fx.Graph()
    values = {start: new.placeholder("x")}
    for node in ordered:
        values[node] = new.node_copy(node, lambda argument: values[argument])
    new.output(values[end])
    return fx.GraphModule(graph.model, new)


# ------------------------------------------------------------------ splitting


def split_model(model, n_trainable_stages, *, stage_ends=None, feature_node=None, vectors=False, adapt=True):
    """Split a network into a :class:`FeatureNet` by node name.

    Parameters
    ----------
    model : nn.Module
        The network, with its weights.
    n_trainable_stages : int
        How many of the last stages train (at least one stage stays frozen);
        0: none, every stage is in the frozen trunk.
    stage_ends : sequence of str or None, default=None
        Names of the nodes (or modules, for their last node) that end each
        stage, in forward order. ``None``: the family's own
        (:func:`~sklearn_panda._engine.families.family_stage_ends`), up to ``feature_node``.
    feature_node : str or None, default=None
        The node whose output gives the features (average-pooled when it is
        a feature map). ``None``: the family's, by default the input of the
        model's classifier (its last Linear or convolution layer).
    vectors : bool, default=False
        Whether the input is vectors ``(n, d)``: a network that is not a
        known image family and has no ``stage_ends`` is then a vector
        backbone, all of it trainable and without a head (``feature_node``
        then needs ``stage_ends``).
    adapt : bool, default=True
        Whether any stage will train. An image network of no known family
        and without ``stage_ends`` is split as follows: when nothing trains,
        into one frozen part up to ``feature_node``; a plain ``nn.Sequential``
        into its children that hold parameters (each with the
        parameter-free children after it); any other network that trains is
        an error that names ``stage_ends``.

    Returns
    -------
    FeatureNet
        ``trunk``: the frozen stages (a :class:`Trunk`); ``stages``: the
        trainable ones, then a :class:`PooledFeatures`; ``head``: the
        classifier on the features, when the features are its input.

    Examples
    --------
    >>> import torch, torchvision
    >>> from sklearn_panda._engine.stages import split_model
    >>> net = split_model(torchvision.models.resnet18(), 2)
    >>> net.stages[0] is net.stages[0], len(net.trunk), len(net.stages)  # layer3, layer4, pooling
    (True, 3, 3)
    >>> net(torch.zeros(1, 3, 32, 32)).shape, net.head.out_features
    (torch.Size([1, 512]), 1000)
    >>> net = split_model(torchvision.models.resnet18(), 1, stage_ends=["layer2", "layer3"], feature_node="layer3")
    >>> net(torch.zeros(1, 3, 32, 32)).shape, net.head is None
    (torch.Size([1, 256]), True)
    """
    model.eval()
    family = family_stage_ends(model)
    known = family is not None
    if stage_ends is None and family is None and vectors:
        if feature_node is not None:
            raise ValueError(
                "feature_node needs stage_ends for a vector backbone: without them the whole "
                "network gives the features and trains."
            )
        return FeatureNet(nn.Identity(), model, None, expects_images=False, model=model)
    if stage_ends is None and family is None and not adapt:
        # Nothing trains: one frozen part from the input to the features.
        family, n_trainable_stages = FamilyStages([]), 0
    elif stage_ends is None and family is None and isinstance(model, nn.Sequential):
        family = FamilyStages(sequential_stage_ends(model))
    if stage_ends is None and family is None:
        children = [name for name, _ in model.named_children()]
        raise ValueError(
            f"{type(model).__name__} is not a network whose stages are known (torchvision's "
            "classifiers, EfficientNet-Lite), so it cannot be split into a frozen trunk and "
            f"trainable stages. {SPLIT_PARAMETERS_HINT}"
            + (f" Its top-level modules: {', '.join(children)}." if children else "")
        )
    if stage_ends is not None and (
        isinstance(stage_ends, str) or not all(isinstance(name, str) for name in stage_ends) or not stage_ends
    ):
        raise ValueError(f"stage_ends must be a non-empty list of node or module names; got {stage_ends!r}.")
    defaults = family if family is not None else FamilyStages([])
    feature_node = feature_node if feature_node is not None else defaults.feature_node
    ends = list(stage_ends) if stage_ends is not None else defaults.ends
    graph = _Graph(model, [*ends, *[name for name in (feature_node, defaults.head) if name]])

    classifier, missing = graph.classifier() if defaults.head is None else (None, None)
    if feature_node is None:
        if classifier is None:
            last = graph.output.args[0]
            output = ""
            if isinstance(last, fx.Node):
                output = f" (its output, for a network without a classifier: {graph.name(last)!r})"
            raise ValueError(
                f"No default feature node for {type(model).__name__}: {missing}. Set feature_node "
                f"to the node whose output gives the features{output}."
            )
        features = classifier.args[0]
    else:
        features = graph.node(feature_node, "feature_node")
    feature_name = graph.name(features)

    upstream = _ancestors(features)
    end_nodes = [graph.node(name, "stage_ends") for name in ends]
    if stage_ends is None:
        end_nodes = [node for node in end_nodes if node in upstream]
    for name, node in zip(ends, end_nodes):
        if node not in upstream:
            raise ValueError(f"stage_ends: {name!r} does not come before the feature node {feature_name!r}.")
    for first, second in zip(end_nodes, end_nodes[1:]):
        if first not in _ancestors(second) or first is second:
            raise ValueError(
                f"stage_ends must be in forward order: {graph.name(first)!r} does not come before "
                f"{graph.name(second)!r}."
            )

    cuts = [None, *end_nodes]
    stages = [_segment(graph, start, end, "stage_ends") for start, end in zip(cuts, cuts[1:])]
    last = end_nodes[-1] if end_nodes else None
    tail = None if last is features else _segment(graph, last, features, "feature_node")
    if n_trainable_stages == 0:
        # Nothing trains: every stage is frozen trunk (the layers up to the features too).
        trunk = Trunk(*stages, *([tail] if tail is not None else []))
        return FeatureNet(
            trunk, nn.Sequential(PooledFeatures(None, feature_name)), None, expects_images=True, model=model
        )
    if not 1 <= n_trainable_stages <= len(stages) - 1:
        raise ValueError(
            f"n_trainable_stages must be between 1 and {len(stages) - 1} for this backbone "
            f"({len(stages)} stages including the stem, ending at "
            f"{', '.join(graph.name(node) for node in end_nodes)}); got {n_trainable_stages}. "
            "stage_ends sets where the stages end."
        )
    split = len(stages) - n_trainable_stages
    for index in range(split, len(stages)):
        if not has_parameters(stages[index]):
            start = graph.name(cuts[index]) if cuts[index] is not None else "the input"
            raise ValueError(
                f"The trainable stage from {start} to {graph.name(end_nodes[index])!r} has no "
                "parameters; stage_ends must end stages that have layers to train."
            )
    trunk = Trunk(*stages[:split])
    trainable = nn.Sequential(*stages[split:], PooledFeatures(tail, feature_name))
    _check_not_shared(trunk, trainable)

    if defaults.head is not None:
        head = graph.modules[defaults.head] if feature_node == defaults.feature_node else None
    elif (
        classifier is not None
        and features is classifier.args[0]
        and isinstance(graph.modules[classifier.target], nn.Linear)
        and isinstance(graph.output.args[0], fx.Node)
    ):
        head = _segment(graph, features, graph.output.args[0], "feature_node")
    else:
        head = None
    return FeatureNet(trunk, trainable, head, expects_images=known or not vectors, model=model)


def _check_not_shared(trunk, trainable):
    frozen = {id(parameter) for parameter in trunk.parameters()}
    shared = [name for name, parameter in trainable.named_parameters() if id(parameter) in frozen]
    if shared:
        raise ValueError(
            f"Parameters used both before and after the cut ({', '.join(shared[:5])}) would be "
            "frozen and trained at once; choose stage_ends so that they fall on one side."
        )
