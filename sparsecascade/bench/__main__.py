"""``python -m sparsecascade.bench {kernels,cascade,real,train_step} [options]``."""
import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"kernels": "sparsecascade.bench.kernels", "cascade": "sparsecascade.bench.cascade",
                "real": "sparsecascade.bench.real",
                "train_step": "sparsecascade.bench.train_step"}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m sparsecascade.bench {{{','.join(commands)}}} [options]  (--help for each)")
        return 2
    import importlib

    importlib.import_module(commands[argv[0]]).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
