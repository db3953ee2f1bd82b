"""One door for image files: decoding at any bit depth, discovery in folders and lists, atomic writes.

Every part of the package that reads or writes files goes through here: the
estimators' data layer (paths and PIL images), the data sets, the command line
and its report, ``save``. numpy and Pillow only; no torch.

Decoding keeps what the file holds: 8-bit images (and palettes, bilevel,
CMYK, ...) come as RGB uint8; 16-bit images (PNG, TIFF) as float32 in [0, 1]
(divided by 65,535), not clipped to white as Pillow's ``convert("RGB")``
would (and so are 32-bit integer files, which must hold values up to 65,535;
a warning says when they hold 8-bit values); float images as they are when
in [0, 1]. Anything else is refused with an error naming the file and its
range, and so are 16-bit colour files (Pillow decodes them to 8 bits) and
TIFFs of several full-size pages.
The EXIF orientation is applied, as a viewer shows the image. Alpha
channels are dropped.
"""

import os
import pathlib
import re
import stat
import warnings

import numpy as np

# The file types read in folders (any case), for the command line and the data sets alike.
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def sixteen_bit_to_unit(values):
    """16-bit intensities (uint16 arrays, 16-bit files) -> float32 in [0, 1]: divided by 65,535.

    The one rule for both, so that an image scores the same as a file and as an array.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._io.images import sixteen_bit_to_unit
    >>> sixteen_bit_to_unit(np.array([0, 32768, 65535], dtype=np.uint16)).round(4).tolist()
    [0.0, 0.5, 1.0]
    """
    return (np.asarray(values, dtype=np.float64) / 65535.0).astype(np.float32)


def read_image(item):
    """An image file or PIL image as an ``(H, W, 3)`` array: uint8, or float32 in [0, 1] beyond 8 bits.

    Parameters
    ----------
    item : str, path-like or PIL.Image.Image

    Returns
    -------
    image : ndarray of shape (H, W, 3)
        uint8 for 8-bit images; float32 in [0, 1] for 16-bit and float ones.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When the file cannot be decoded, or holds values that are not
        intensities (negative, beyond 16 bits, float outside [0, 1]).

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> from sklearn_panda._io.images import read_image
    >>> ramp = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    >>> read_image(ramp)[0, :, 0].tolist()  # 16 bits: not clipped to white
    [0.0, 0.5000076293945312, 1.0]
    >>> read_image(Image.new("L", (2, 1), 128)).dtype
    dtype('uint8')
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = "the PIL image" if hasattr(item, "getdata") else os.fspath(item)
    if hasattr(item, "getdata"):
        _check_decodable_depth(item, name)  # before decoding, which forgets how the file stored it
        return _as_array(ImageOps.exif_transpose(item), name)
    if os.path.isdir(item):
        raise ValueError(f"{name} is a folder, not an image file: list its image files instead.")
    try:
        with Image.open(item) as opened:
            _check_one_image(opened, name)
            _check_decodable_depth(opened, name)
            return _as_array(ImageOps.exif_transpose(opened), name)
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file not found: {name}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Could not read image file {name}: {error}") from None


def _check_one_image(opened, name):
    """Refuse a TIFF of several full-size pages (a PIL image given is the frame its user chose).

    Other files of several frames keep their first, the image itself: a phone's JPEG with a
    gain map or a preview (MPO), a TIFF with reduced-size thumbnails, an animation's first frame.
    """
    frames = getattr(opened, "n_frames", 1)
    if opened.format != "TIFF" or frames < 2:
        return
    size, full_size = opened.size, 0
    try:
        for page in range(frames):
            opened.seek(page)
            full_size += opened.size == size
    finally:
        opened.seek(0)
    if full_size > 1:
        raise ValueError(
            f"{name} is a TIFF of {full_size} pages of its size; only its first would be read. Save each "
            "page as a file of its own, or pass the page you mean as a PIL image."
        )


# Raw modes of samples of 16 bits that Pillow decodes to 8 (colour, grey with alpha, CMYK).
_CUT_TO_8_BITS = re.compile(r"(RGB|RGBA|RGBX|LA|CMYK);16[BLN]?")


def _check_decodable_depth(image, name):
    """Refuse a file whose 16-bit samples Pillow would decode to 8 bits.

    The decoder's raw mode (``"RGB;16B"``, ...) tells how the file stores its samples; an image
    already decoded (no tiles left) or made in memory tells nothing and passes.
    """
    tiles = getattr(image, "tile", None) or []
    arguments = tiles[0][3] if tiles and len(tiles[0]) > 3 else None  # plain tuples before Pillow 11
    if isinstance(arguments, tuple) and arguments:
        arguments = arguments[0]
    if isinstance(arguments, str) and _CUT_TO_8_BITS.fullmatch(arguments):
        raise ValueError(
            f"{name} is a 16-bit image with colour or alpha channels ({arguments}), which Pillow decodes to "
            "8 bits only: the low 8 bits of every sample would be lost (a 12-bit camera image would read "
            "almost black). Save it as 16-bit greyscale without alpha or as 8-bit colour, or read it with a "
            "library that keeps 16-bit colour (cv2.imread(path, cv2.IMREAD_UNCHANGED)[..., ::-1]) and pass "
            "the uint16 arrays, which are read at 16 bits."
        )


def _as_array(image, name):
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        values = np.asarray(image)
        if values.ndim == 3:  # multi-channel images Pillow keeps at their depth
            values = values[..., :3]
        values = values.astype(np.float32 if mode == "F" else np.float64)
        if mode == "F":
            low, high = float(values.min()), float(values.max())
            if not (np.isfinite(values).all() and low >= 0 and high <= 1):
                raise ValueError(
                    f"{name} is a float image with values in [{low:.4g}, {high:.4g}]; float images must "
                    "hold intensities in [0, 1]. Rescale it (or save it as 8- or 16-bit) first."
                )
        else:
            low, high = int(values.min()), int(values.max())
            if low < 0 or high > 65535:
                raise ValueError(
                    f"{name} is a {mode!r} integer image with values in [{low}, {high}], beyond 16 bits; "
                    "save it as an 8- or 16-bit image, or as float in [0, 1]."
                )
            if 1 < high <= 255:
                # One message for every such file, so that a folder of them warns once.
                warnings.warn(
                    "Some 16-bit or 32-bit integer image files hold values up to 255 only, which read as "
                    "almost black (they are divided by 65,535, as 16-bit files are). Save 8-bit values "
                    "as 8-bit images.",
                    UserWarning,
                    stacklevel=4,
                )
            values = sixteen_bit_to_unit(values)
        values = values.astype(np.float32)
        return np.repeat(values[..., None], 3, axis=2) if values.ndim == 2 else values
    # A copy (np.array): Pillow's buffer is read-only, and torch would warn about sharing it.
    return np.array(image.convert("RGB"), dtype=np.uint8)


def read_binary_mask(path):
    """A mask file as a bool array: True where the pixel is not 0."""
    return read_image(path)[..., 0] > 0


# ------------------------------------------------------------- discovery


def collect_images(sources):
    """Image paths named by folders, image files and ``.txt`` list files.

    Parameters
    ----------
    sources : list of str or path-like
        A folder: its image files (``IMAGE_EXTENSIONS``, any case), searched
        recursively, sorted, skipping hidden files and folders (names
        starting with ``.``). A ``.txt`` file: one image path a line,
        relative to the list file's folder; blank lines and lines starting
        with ``#`` are skipped. Any other file: that image.

    Returns
    -------
    paths : list of str
        In the order of ``sources``.

    Raises
    ------
    FileNotFoundError
        For a source, or an entry of a list file, that does not exist.
    ValueError
        For a folder without images or a list file without entries.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from sklearn_panda._io.images import collect_images
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.PNG", "a.jpg", "notes.md"):
    ...     _ = (folder / name).write_bytes(b"")
    >>> [pathlib.Path(path).name for path in collect_images([folder])]
    ['a.jpg', 'b.PNG']
    """
    paths = []
    for source in map(pathlib.Path, sources):
        if not source.exists():
            raise FileNotFoundError(f"No such file or folder: {source}")
        if source.is_dir():
            paths.extend(_folder_images(source))
        elif source.suffix.lower() == ".txt":
            paths.extend(_listed_images(source))
        else:
            paths.append(str(source))
    return paths


def image_files(folder):
    """The image files under ``folder``, in subfolders too, as paths, unsorted: the package's one rule.

    An image file has one of ``IMAGE_EXTENSIONS`` (any case); hidden files and
    folders (names starting with ``.``) are skipped: they are tool debris
    (macOS's ``._name.png`` are no images).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from sklearn_panda._io.images import image_files
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("a.jpg", "._a.jpg", "notes.md"):
    ...     _ = (folder / name).write_bytes(b"")
    >>> [path.name for path in image_files(folder)]
    ['a.jpg']
    """
    folder = pathlib.Path(folder)
    return [
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]


def _folder_images(folder):
    found = sorted(image_files(folder))
    if not found:
        raise ValueError(
            f"No images in folder {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}, in subfolders too)."
        )
    return [str(path) for path in found]


def _listed_images(list_file):
    paths = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = list_file.parent / entry
        if not path.is_file():
            raise FileNotFoundError(f"{list_file}, line {number}: no image file {path}")
        paths.append(str(path))
    if not paths:
        raise ValueError(f"The list file {list_file} names no images.")
    return paths


# ---------------------------------------------------------------- writing


def write_files(contents):
    """Write ``{path: bytes}``: temporary files first, renamed into place only once all are written.

    An interrupted or failing write leaves every existing file as it was.
    New files get the usual permissions (``0o666`` less the umask); a file replaced keeps its own.
    A path that is a symbolic link writes the file it points to (the link stays a link).

    Examples
    --------
    >>> import os, tempfile
    >>> from sklearn_panda._io.images import write_files
    >>> folder = tempfile.mkdtemp()
    >>> write_files({os.path.join(folder, "a.txt"): b"one", os.path.join(folder, "b.txt"): b"two"})
    >>> sorted(os.listdir(folder))
    ['a.txt', 'b.txt']
    """
    written, targets = {}, {}
    for path in contents:
        first = targets.setdefault(os.path.realpath(path), path)
        if first is not path:
            raise ValueError(f"{os.fspath(first)} and {os.fspath(path)} are one file; it would be written twice.")
    try:
        for path, data in contents.items():
            path = os.path.realpath(path)
            folder, name = os.path.split(path)
            temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
            with open(temporary, "xb") as file:
                written[temporary] = path
                file.write(data)
            if os.path.isfile(path):
                os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))
        for temporary, path in list(written.items()):
            os.replace(temporary, path)
            del written[temporary]
    finally:
        for temporary in written:
            if os.path.exists(temporary):
                os.unlink(temporary)
