"""Losses of PANDA's adaptation: compactness, the EWC penalty and its Fisher diagonal."""

import torch
import torch.nn.functional as F


def compactness_loss(features, center):
    """Mean squared distance of the batch's features to the fixed centre (paper Eq. 1, batch mean).

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.losses import compactness_loss
    >>> compactness_loss(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([2.0, 0.0]))
    tensor(1.)
    """
    return (features - center).pow(2).sum(dim=1).mean()


def ewc_penalty(parameters, anchors, fisher):
    """``sum_i F_i (theta_i - theta*_i)^2`` over the trainable parameters (paper Eq. 4, without lambda / 2).

    Parameters
    ----------
    parameters, anchors, fisher : sequences of tensors of matching shapes
        Current parameters, their pretrained values and their Fisher diagonal.
    """
    total = parameters[0].new_zeros(())
    for parameter, anchor, weight in zip(parameters, anchors, fisher):
        total = total + (weight * (parameter - anchor).pow(2)).sum()
    return total


def sample_labels(logits, generator):
    """One label per row, drawn from the softmax of ``logits`` with the CPU ``generator``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.losses import sample_labels
    >>> sample_labels(torch.tensor([[0.0, 50.0], [50.0, 0.0]]), torch.Generator().manual_seed(0))
    tensor([1, 0])
    """
    probabilities = torch.softmax(logits.detach().float(), dim=1).cpu()
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1).to(logits.device)


def per_sample_squared_gradients(net, hidden, labels, parameters, chunk_size=8):
    """Sum over the samples of the squared gradient of each sample's own cross-entropy.

    ``torch.func``: ``vmap`` over ``grad`` of a ``functional_call`` of the
    stages, ``chunk_size`` samples at a time to bound memory. Always in
    float32, outside any autocast: a one-off estimate gains nothing from
    lower precision, and batch norm under ``vmap`` and autocast fails.

    Parameters
    ----------
    net : FeatureNet
    hidden : Tensor
        Trunk outputs of the samples.
    labels : Tensor of int
        One class per sample.
    parameters : list of Tensors
        Parameters of ``net.stages`` to differentiate.

    Returns
    -------
    sums : list of Tensors, shaped like ``parameters``
    """
    from torch.func import functional_call, grad, vmap

    by_identity = {id(p): name for name, p in net.stages.named_parameters()}
    names = [by_identity[id(p)] for p in parameters]
    fixed = {name: p.detach() for name, p in net.stages.named_parameters() if name not in set(names)}
    fixed.update(dict(net.stages.named_buffers()))

    def sample_loss(values, sample, label):
        state = {**fixed, **dict(zip(names, values))}
        logits = net.head(functional_call(net.stages, state, (sample.unsqueeze(0),))).float()
        return F.cross_entropy(logits, label.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        gradients = per_sample(tuple(p.detach() for p in parameters), hidden.float(), labels)
    return [gradient.pow(2).sum(dim=0) for gradient in gradients]


def fisher_diagonal(net, batches, parameters, generator):
    """Diagonal Fisher information of the pretrained classifier, without labels.

    For each sample a label is *sampled from the network's own predictive
    distribution* (so the expectation is the true Fisher of the model, and no
    labels are needed), and the Fisher diagonal is the mean over samples of
    the squared gradient of that sample's cross-entropy (per-sample
    gradients, as EWC defines it): its scale does not depend on how the
    samples are batched. The paper computes it on ImageNet batches with their
    labels; here it is computed on the training images.

    Parameters
    ----------
    net : FeatureNet
        Must have a classifier ``head``.
    batches : iterable of Tensors
        Trunk outputs (``net.trunk(x)``) of input batches, on the net's device.
    parameters : list of Tensors
        The parameters to compute the Fisher for (trainable parameters of
        ``net.stages``).
    generator : torch.Generator
        CPU generator for the label sampling.

    Returns
    -------
    fisher : list of Tensors, shaped like ``parameters``
    """
    if net.head is None:
        raise ValueError(
            "EWC needs the Fisher information of a classifier head, and this backbone "
            "has none; pass fisher=... explicitly or use regularization=None."
        )
    fisher = [torch.zeros_like(p) for p in parameters]
    n_samples = 0
    for hidden in batches:
        with torch.no_grad():
            labels = sample_labels(net.head(net.stages(hidden)), generator)
        sums = per_sample_squared_gradients(net, hidden, labels, parameters)
        for total, value in zip(fisher, sums):
            total.add_(value.detach())
        n_samples += len(hidden)
    if n_samples == 0:
        raise ValueError("No batch to estimate the Fisher information from.")
    return [total / n_samples for total in fisher]


def mean_shifted_contrastive_loss(first, second, center, temperature=0.25):
    """Contrastive (NT-Xent) loss between two views' mean-shifted features.

    The mean-shifted contrastive loss of Reiss and Hoshen (AAAI 2023): each
    feature is L2-normalised, the fixed unit centre ``center`` (the normalised
    mean of the normalised pretrained training features) is subtracted, and
    the result is normalised again. Each sample's two views are then pulled
    together and pushed away from every other view of the batch, with
    ``temperature``; unlike the compactness loss this has no collapsed
    minimum, since collapsed features cannot tell the views apart.

    Parameters
    ----------
    first, second : Tensor of shape (n, d)
        Features of the first and the second view of the same ``n`` samples.
    center : Tensor of shape (d,)
        Unit-length centre.
    temperature : float, default=0.25
        The paper's value.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.losses import mean_shifted_contrastive_loss
    >>> center = torch.tensor([1.0, 0.0, 0.0])
    >>> views = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    >>> aligned = mean_shifted_contrastive_loss(views, views, center)
    >>> swapped = mean_shifted_contrastive_loss(views, views.flip(0), center)
    >>> bool(aligned < swapped)
    True
    """
    shifted = [F.normalize(F.normalize(view, dim=1) - center, dim=1) for view in (first, second)]
    both = torch.cat(shifted)
    n_samples = len(first)
    logits = both @ both.T / temperature
    # A view is never its own positive nor its own negative.
    logits = logits.masked_fill(torch.eye(2 * n_samples, dtype=torch.bool, device=logits.device), float("-inf"))
    positives = torch.cat([torch.arange(n_samples, 2 * n_samples), torch.arange(n_samples)]).to(logits.device)
    return F.cross_entropy(logits, positives)
