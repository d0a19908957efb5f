"""The run folder's format, below training, inference, trust and gan (which all read or write run folders).

- :mod:`pneumo.runs.format`: file names, ``checkpoint.json`` (reader and writer), the weights' digest (JSON only);
- :mod:`pneumo.runs.checkpoint`: weights files (safetensors) and :func:`~pneumo.runs.checkpoint.load_run`;
- :mod:`pneumo.runs.state`: the resumable training state (``last.state.*``) of classifier and GAN runs;
- :mod:`pneumo.runs.runinfo`: ``env.json`` and ``metrics.jsonl``;
- :mod:`pneumo.runs.evals`: the evaluations stored in ``eval-*/metrics.json``;
- :mod:`pneumo.runs.ood`: the stored out-of-distribution scorers and their dispatch (NumPy only; fitted by
  :mod:`pneumo.trust.ood`); :mod:`pneumo.runs.ood_depth`: the ``multidepth-oe`` one;
- :mod:`pneumo.runs.context`: a run folder opened for use (model, config, split, contract, OOD scores of its images).

Nothing is imported here, so that the ONNX path reads the JSON parts without torch.
"""
