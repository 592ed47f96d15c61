"""Publish an LC model to the Hugging Face Hub, the way the zoo's models are published.

    python examples/publish_to_hub.py [--model NAME] [--repo-id you/NAME] \
        [--out published] [--upload]

Loads a model (a zoo name, a Hub repo id, a save_pretrained folder, or a training checkpoint
``runs/.../last.pt``), writes the folder a Hub repository holds (config.json, fp16
model.safetensors, README.md model card), loads it back to check that it round-trips, and with
``--upload`` (and a token: ``HF_TOKEN`` or ``huggingface-cli login``) pushes it to ``--repo-id``.
Without ``--upload`` nothing leaves the machine. For the zoo entries themselves, ``zoo/publish.py``
also fills the card from the evaluation results and ships the weights in the package.
"""
import argparse
from pathlib import Path

import torch

import sparsecascade
from sparsecascade.rho import format_rho
from sparsecascade.zoo import DEFAULT_MODEL


def load(source: str):
    if source.endswith(".pt") and Path(source).is_file():  # a training checkpoint
        from sparsecascade.train import load_trained_model

        return load_trained_model(source)[0].eval()
    return sparsecascade.from_pretrained(source)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="zoo name, repo id, folder or last.pt (default: %(default)s)")
    parser.add_argument("--repo-id", default="your-name/lc-vgg16-camvid")
    parser.add_argument("--out", default="published", help="the folder to write")
    parser.add_argument("--upload", action="store_true", help="push to --repo-id (needs a token and network)")
    args = parser.parse_args(argv)

    model = load(args.model)
    model.save_pretrained(args.out, dtype=torch.float16)
    files = sorted(p.name for p in Path(args.out).iterdir())
    size = (Path(args.out) / "model.safetensors").stat().st_size / 2**20
    print(f"wrote {args.out}: {', '.join(files)} (weights {size:.1f} MB, fp16)")

    again = sparsecascade.from_pretrained(args.out)  # the round trip: the fp16-rounded weights, the same config
    mine, theirs = model.state_dict(), again.state_dict()
    exact = all(torch.equal(theirs[k], v.half().to(v.dtype)) if v.is_floating_point() else torch.equal(theirs[k], v)
                for k, v in mine.items())
    print(f"reloaded: {again.config['architecture']}, {again.config['num_classes']} classes, "
          f"rho {format_rho(again.rho)}, weights {'equal to' if exact else 'DIFFERENT from'} the original rounded to fp16")
    if not exact:
        raise SystemExit("the saved folder does not round-trip")

    if args.upload:
        url = again.push_to_hub(args.repo_id, dtype=torch.float16)
        print(f"uploaded: {url}")
    else:
        print(f"not uploaded (pass --upload to push to {args.repo_id})")


if __name__ == "__main__":
    main()
