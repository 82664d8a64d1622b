"""The plate vocabulary shared by the data step, the model, evaluation and the TorchServe handler.

Class order is part of the model: it is stored in pipeline.pth and must never be reordered silently.
"""

PLATE_TYPES = ("r_board", "l_board")  # r_board: two rows ("NN X" over "NNNN"); l_board: one row ("NN X NNNN")
REGIONS = ("sub_text", "main_text")  # sub_text: region digits + class letter ("38D"); main_text: serial ("4831")
DIGITS = tuple("0123456789")
LETTERS = tuple("ABCDE")
CLASSES = PLATE_TYPES + REGIONS + DIGITS + LETTERS

# A plate reads as 2 digits + 1 letter (sub_text) then 4 digits (main_text), e.g. "38D4831".
SUB_PATTERN = ("digit", "digit", "letter")
MAIN_PATTERN = ("digit",) * 4


def category_id(name: str) -> int:
    """COCO category id (1-based) of a class name."""
    return CLASSES.index(name) + 1
