"""Losses of PANDA's adaptation: compactness, the EWC penalty and its Fisher diagonal."""

import torch
import torch.nn.functional as F


def compactness_loss(features, center):
    """Mean squared distance of the batch's features to the fixed centre (paper Eq. 1, batch mean).

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._losses import compactness_loss
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


def fisher_diagonal(net, batches, parameters, generator):
    """Diagonal Fisher information of the pretrained classifier, without labels.

    For each batch the labels are *sampled from the network's own predictive
    distribution* (so the expectation is the true Fisher of the model, and no
    labels are needed); the squared gradient of the batch's cross-entropy is
    averaged over batches. The paper computes it on ImageNet batches with
    their labels; here it is computed on the training images.

    Parameters
    ----------
    net : FeatureNet
        Must have a classifier ``head``.
    batches : iterable of Tensors
        Trunk outputs (``net.trunk(x)``) of input batches, on the net's device.
    parameters : list of Tensors
        The parameters to compute the Fisher for (the trainable ones).
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
    n_batches = 0
    for hidden in batches:
        logits = net.head(net.stages(hidden)).float()
        probabilities = torch.softmax(logits.detach(), dim=1).cpu()
        labels = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
        loss = F.cross_entropy(logits, labels.to(logits.device))
        gradients = torch.autograd.grad(loss, parameters)
        for total, gradient in zip(fisher, gradients):
            total.add_(gradient.detach().pow(2))
        n_batches += 1
    if n_batches == 0:
        raise ValueError("No batch to estimate the Fisher information from.")
    return [total / n_batches for total in fisher]
