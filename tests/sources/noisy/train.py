"""Floods stdout (about 2 MB), then raises: run.log must stay bounded."""

LINES = 20_000


def train(run):
    print("FIRST LINE OF THE FLOOD", flush=True)
    for i in range(LINES):
        print(f"line {i:06d} " + "x" * 88)
    print("LAST LINE OF THE FLOOD", flush=True)
    raise RuntimeError("flooded")
