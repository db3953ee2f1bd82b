"""Parameter and attribute texts that several estimators share, written once.

An estimator's docstring names a shared text by a line of its own,
``%(backbone)s``, indented as the text should be; :func:`fill_doc` puts the
text there when the class is defined (as MNE's ``fill_doc``). numpydoc and
``help()`` see the full docstring; the signatures stay explicit.

Examples
--------
>>> from sklearn_panda._estimators.docstrings import fill_doc
>>> @fill_doc
... class Example:
...     '''An example.
...
...     Parameters
...     ----------
...     %(verbose)s
...     '''
>>> print(Example.__doc__.splitlines()[4])
    verbose : int, default=0
"""

import re
import textwrap

__all__ = ["DOCS", "fill_doc"]

# One line holding only ``%(name)s`` (and its indentation).
_PLACEHOLDER = re.compile(r"^( *)%\((\w+)\)s$", re.MULTILINE)

DOCS = {
    "backbone": """\
backbone : str or callable, default="resnet152"
    The name of any classification model of ``torchvision.models``
    (ResNet, EfficientNet, MobileNet, RegNet, ConvNeXt, ViT, Swin,
    DenseNet, ...; :ref:`choosing-a-backbone`),
    ``"efficientnet_lite0"`` (extra ``lite``; works offline), or a callable
    returning an ``nn.Module`` (a torchvision model of these families, or
    any network with ``stage_ends``; a ``timm`` or ``torch.hub`` model,
    say). A network that is neither is used whole as a trainable vector
    backbone for ``(n, d)`` input, and is an error for images. The module
    a function returns is copied (a class's is new already), so ``lambda:
    model`` leaves ``model`` as it was; a module itself is refused (clones
    would share it).""",
    "weights": """\
weights : "imagenet", str, path or None, default="imagenet"
    For a named backbone: ``"imagenet"``, pretrained ImageNet weights
    (ResNets: torchvision's ``IMAGENET1K_V1``, as in the paper; other
    torchvision models: their ``DEFAULT``); another string, a torchvision
    weights name; ``None``, random (for tests). For a callable: the
    network keeps the weights its factory gave it, pretrained or not
    (``timm.create_model(name, pretrained=True)`` brings its own), and
    ``"imagenet"`` and ``None`` alike load nothing over them. A path: a
    state dict, loaded over either. When the weights cannot be found or
    downloaded the error says where to put them; random weights are
    never used silently.""",
    "n_steps": """\
n_steps : int or "auto", default="auto"
    Mini-batches of adaptation. ``0`` gives the unadapted pretrained
    features, the paper's baseline. ``"auto"``: the backbone's recipe
    (:ref:`recipes`): 100 for ``"efficientnet_lite0"``, the best
    length measured on Fashion-MNIST; 300 for every other backbone (the
    paper used 2,300, 7,800 with EWC, with ResNet152 on a GPU). The value
    used is in ``recipe_``.""",
    "loss": """\
loss : {"compactness", "mean_shifted"} or "auto", default="auto"
    ``"compactness"``: the paper's Eq. 1, the mean squared distance of the
    (projected) features to the fixed centre. ``"mean_shifted"``: the
    mean-shifted contrastive loss of the paper's follow-up (Reiss and
    Hoshen, AAAI 2023): two random views of each image (resized crop,
    flip, colour jitter, greyscale), L2-normalised features shifted by
    the fixed unit centre, and a contrastive loss between the views. It
    does not collapse, but each step runs the frozen trunk on both views
    (the trunk cache serves only the centre and the gallery), so a step
    costs far more; images only. ``"auto"``: the backbone's recipe,
    ``"compactness"`` for every backbone so far. The value used is in
    ``recipe_``.""",
    "temperature": """\
temperature : float, default=0.25
    Temperature of ``loss="mean_shifted"`` (the follow-up paper's value).""",
    "regularization": """\
regularization : {None, "ewc"}, default=None
    ``"ewc"`` adds ``ewc_lambda / 2 * sum F_i (theta_i - theta*_i)^2``.""",
    "ewc_lambda": """\
ewc_lambda : float, default=1e4
    EWC strength (the paper always uses 1e4).""",
    "fisher": """\
fisher : mapping, path or None, default=None
    The diagonal Fisher for EWC, keyed by the names of
    ``net_.stages.named_parameters()`` (as in a fitted ``fisher_``), or a
    file of such a mapping (``torch.save``; loaded with
    ``weights_only=True``). ``None``: estimated on the training images with
    labels sampled from the pretrained classifier's own predictions (no
    labels needed; the paper used labelled ImageNet batches instead).""",
    "n_fisher_batches": """\
n_fisher_batches : int, default=100
    Mini-batches for the Fisher estimate (the paper: 100).""",
    "learning_rate": """\
learning_rate : float or "auto", default="auto"
    SGD learning rate. ``"auto"``: the backbone's recipe, the paper's
    1e-2 for every backbone but ``"efficientnet_lite0"`` (1e-1, measured
    best). The value used is in ``recipe_``.""",
    "clip_norm": """\
clip_norm : float, None or "auto", default="auto"
    Gradient-norm clipping; ``None`` clips nothing. ``"auto"``: the
    backbone's recipe, the paper's 1e-3 for every backbone so far. The
    value used is in ``recipe_``.""",
    "n_trainable_stages": """\
n_trainable_stages : int, default=2
    How many final stages train: ResNet ``layer3`` + ``layer4`` (the
    paper's recommendation), EfficientNet-Lite0's last 5 blocks + head,
    the last two blocks of a ViT or Swin; the stages of each family are
    in :ref:`choosing-a-backbone`. Layers between the last stage and
    ``feature_node`` (pooling, a final norm) train with the last stage.""",
    "stage_ends": """\
stage_ends : list of str or None, default=None
    Where the network is cut into stages: the names of the nodes whose
    outputs end each stage, in forward order (a module's name stands for
    its last node; ``torchvision.models.feature_extraction.get_graph_node_names``
    lists the nodes). ``None``: the family's stages, up to
    ``feature_node``. Required for images with a network that is not a
    torchvision classifier (a ``timm`` model, say). A cut must leave
    one tensor that carries everything forward, such as the output of a
    whole block; otherwise the error says which node is read across it.""",
    "feature_node": """\
feature_node : str or None, default=None
    The node whose output gives the features; a feature map
    ``(n, C, H, W)`` is average-pooled. ``None``: the input of the
    network's classifier (its last Linear, or convolution), that is the
    pooled penultimate features, the class token of a ViT. EWC's Fisher
    needs that classifier: with another node, pass ``fisher``.""",
    "resize": """\
resize : int, (int, int), None or "auto", default="auto"
    Resize the images: an integer is the new shorter side (the aspect
    ratio kept), a pair the new ``(height, width)``; ``None`` keeps their
    size. ``"auto"``: the backbone's recipe (with ``crop_size``;
    :ref:`recipes`): the paper's 256, then a 224 crop, for every
    backbone but ``"efficientnet_lite0"``, which takes the whole image at
    ``(224, 224)`` without a crop: the paper's crop drops a border of 1/16
    of the side all round (23% of the image), where anomalies can lie,
    and on Fashion-MNIST the whole image scored higher on average. The
    values used are in ``preprocessing_``.""",
    "crop_size": """\
crop_size : int, None or "auto", default="auto"
    Then centre-crop a ``crop_size`` square; ``None`` crops nothing.
    ``"auto"``: the backbone's recipe (above).""",
    "normalize_features": """\
normalize_features : bool, default=True
    L2-normalise the pooled features for both the compactness loss (an
    angular centre loss) and the output. On Fashion-MNIST with
    EfficientNet-Lite0 this was several ROC AUC points better than raw
    features, and adaptation then helped instead of hurting.""",
    "average_mirror": """\
average_mirror : bool, default=False
    Average each image's output features with those of its mirror image
    (flipped left to right after resizing), at fit and when scoring: two
    network passes per image instead of one. Adaptation itself trains on the
    images as given. With EfficientNet-Lite0's recipe (Mahalanobis scorer) it
    gained +0.14 (Fashion-MNIST) and +0.13 (natural photos) mean test ROC AUC
    and no class lost more than 0.09 against the paper's baseline
    (``benchmarks/RESULTS.md``, defaults study); not the default, for its
    second pass. Images only: a vector backbone refuses it.""",
    "batch_size": """\
batch_size : int, default=32
    Mini-batch size of adaptation (the paper: 32).""",
    "inference_batch_size": """\
inference_batch_size : int or "auto", default="auto"
    Samples per forward pass without gradients (the trunk cache, the
    features of the training and of new samples). ``"auto"``:
    ``batch_size`` on a GPU; on the CPU, the most samples (up to
    ``batch_size``) whose largest activation fills at most half the CPU's
    last-level cache, measured on one sample once per fitted model (read
    from Linux's ``/sys``; 32 MiB assumed elsewhere): a CPU runs a forward
    pass fastest when each layer's output stays in that cache, and falls
    off steeply beyond (measurements: ``benchmarks/RESULTS.md``).
    Features differ between batch sizes only by floating-point rounding.""",
    "precision": """\
precision : {"float32", "bfloat16", "float16"}, default="float32"
    Autocast precision of the network's forward passes; the stem and
    the first block group always run in float32 (where rounding costs
    the most accuracy). ``"bfloat16"`` needs native support to be fast
    (recent x86 CPUs with AVX512-BF16 or AMX, Ampere or later GPUs;
    elsewhere it is emulated); where it is, it speeds extraction up with
    ROC AUC within about a tenth of a point of float32's
    (``benchmarks/RESULTS.md``). float32 stays the default for results
    that do not depend on the hardware. Training in ``"float16"`` scales
    the loss (``torch.amp.GradScaler``), so that small gradients do not
    underflow.""",
    "trunk_cache_mb": """\
trunk_cache_mb : float, default=2048
    The frozen trunk's outputs for the training images are computed once
    and kept (on the device) when they fit in this many megabytes, instead
    of once per step; results are identical. 0 turns the cache off.""",
    "compile": """\
compile : bool, default=False
    Run the forward passes without gradients (the trunk cache, the
    features of the training and of new samples) through
    ``torch.compile`` with weight freezing. It gives the same ROC AUC as
    eager and helps most networks made of many small operations, which it
    fuses (EfficientNet-Lite0 more than ResNet152), after a one-off
    compilation per fitted model and process that takes far longer than a
    batch: it pays off for thousands of images, not for a few
    (``benchmarks/RESULTS.md``). Needs a C++ compiler (CPU) or Triton
    (CUDA). Partial batches are zero-padded to the inference batch
    size so that one compilation serves every call; for the same reason,
    the halving of batches after a GPU out-of-memory error does not help
    here: choose an ``inference_batch_size`` that fits.""",
    "device": """\
device : str or torch.device, default="auto"
    ``"auto"``: CUDA when available, else the CPU.""",
    "random_state": """\
random_state : int, RandomState instance or None, default=None
    Seeds the mini-batch order, the Fisher's label sampling and random
    initialisation, through local generators only.""",
    "verbose": """\
verbose : int, default=0
    Progress bars on stderr when > 0.""",
    "preprocessing_": """\
preprocessing_ : dict
    The ``resize`` and ``crop_size`` the images were fitted with
    (``"auto"`` resolved by the backbone's recipe); new images are
    preprocessed the same way. Likewise ``normalize_features_``,
    ``precision_`` (and ``average_mirror_`` where there is that parameter)
    keep the values fitted with: scoring, ``transform`` and the export read
    these, so that ``set_params`` after ``fit`` changes no output.""",
    "n_features_in_": """\
n_features_in_ : int
    Only for 2-D vector input.""",
    "offset_": """\
offset_ : float
    Threshold of ``decision_function``.""",
}


def fill_doc(obj):
    """Put the shared texts of :data:`DOCS` into ``obj``'s docstring, each at its placeholder's indentation.

    Parameters
    ----------
    obj : class or function
        Its docstring may hold lines ``%(name)s`` for names of ``DOCS``.

    Returns
    -------
    obj
        The same object, its ``__doc__`` filled in (left as it is under
        ``python -OO``, which removes docstrings).

    Raises
    ------
    KeyError
        For a placeholder that names no shared text.
    """
    if obj.__doc__ is None:
        return obj

    def shared_text(match):
        indentation, name = match.groups()
        if name not in DOCS:
            raise KeyError(f"{obj.__qualname__}'s docstring names %({name})s, which sklearn_panda._estimators.docstrings.DOCS lacks.")
        return textwrap.indent(DOCS[name], indentation)

    obj.__doc__ = _PLACEHOLDER.sub(shared_text, obj.__doc__)
    return obj
