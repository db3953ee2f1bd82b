"""The torch engine: networks, their split, input batches, passes, training, exported graphs.

No module here imports estimator code (``sklearn_panda._estimators``); estimators drive
these modules, never the other way round.

* ``backbones`` builds a network and loads its weights; ``families`` says where each
  family's stages end; ``stages`` splits it into trunk / stages / head (torch.fx);
  ``patch_features`` takes mid-level maps of it as patch features.
* ``data`` turns checked input into normalised batches; ``augment`` makes the augmented views.
* ``inference`` runs batched passes (trunk cache and chunks, the out-of-memory retry);
  ``training`` the SGD loop; ``losses`` compactness, EWC and the mean-shifted loss;
  ``coreset`` the greedy k-center memory bank.
* ``compilation``, ``device``, ``progress``: torch.compile, devices and seeding, progress bars.
* ``onnx_graph`` a detector's scoring as one module, for export; ``quantize`` int8 ONNX.
"""
