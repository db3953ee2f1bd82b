"""Input and output: files in, files out.

* ``images``: decoding at any bit depth with EXIF orientation, discovery of image files in
  folders and list files (one extension list), one atomic writer.
* ``persistence``: :func:`~sklearn_panda.save` / :func:`~sklearn_panda.load` without pickle.
* ``dataset_files``, ``deeppcb``: the file formats of the data sets ``sklearn_panda.datasets`` reads.
* ``report``: the command line's HTML report, from ``templates/report.html``.
"""
