"""`ilex register` (to come)."""


def add_parser(sub) -> None:
    pass
