"""The end-to-end experiment: does MAE pretraining beat random init on real photos?

Kept apart from the toolkit's library (``backbones``, ``pretrain``, ``detection``,
``segmentation``, ``tools``' shared modules), which never imports it:

- ``experiment.paste_dataset``: the annotated real-pixel set (real cut-outs pasted on real photos);
- ``experiment.probe``: the frozen-encoder linear probe of instance features;
- ``experiment.driver``: the one command that pretrains, fine-tunes both inits over seeds, probes,
  draws and reports.

Their command lines stay ``tools/e2e.py``, ``tools/make_paste_dataset.py`` and
``tools/probe_instances.py`` (thin scripts). See docs/e2e.md.
"""
