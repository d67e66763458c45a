"""`ilex apply` (to come)."""


def add_parser(sub) -> None:
    pass
