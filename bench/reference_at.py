"""The PyTorch reference (../shared/bench/reference/bench_search.py) at a size it does not list,
without touching it: adds a shape to its SHAPES table, then runs its main with the other arguments.

  python bench/reference_at.py --ref DIR --batch 64 --c 32 --layers 8 [--in-channels 1 --hw 28] \
      --variant darts --warmup 2 --steps 5 --min-steps 3 --budget 300 --threads 2

The shape is named c{C}-b{batch}-l{layers} (plus -i{in}x{hw} when not 1x28x28) and passed as
--shape; the reference prints its usual `RESULT {json}` line (batch, C and layers included).
"""
import argparse
import os
import sys


def main():
    ap = argparse.ArgumentParser(add_help=True)
    ap.add_argument('--ref', required=True, help='folder of bench_search.py')
    ap.add_argument('--batch', type=int, required=True)
    ap.add_argument('--c', type=int, required=True, help="the supernet's initial channels C")
    ap.add_argument('--layers', type=int, required=True, help='cells')
    ap.add_argument('--in-channels', type=int, default=1)
    ap.add_argument('--hw', type=int, default=28, help='image height = width')
    args, rest = ap.parse_known_args()
    if '--shape' in rest:
        ap.error('--shape is chosen here from --batch, --c and --layers')
    sys.path.insert(0, os.path.abspath(args.ref))
    import bench_search  # noqa: E402  (sets its thread variables before importing torch)

    name = f'c{args.c}-b{args.batch}-l{args.layers}'
    if (args.in_channels, args.hw) != (1, 28):
        name += f'-i{args.in_channels}x{args.hw}'
    bench_search.SHAPES[name] = (args.batch, args.in_channels, args.hw, args.hw, args.c, args.layers)
    sys.argv = [os.path.join(args.ref, 'bench_search.py'), '--shape', name] + rest
    bench_search.main()


if __name__ == '__main__':
    main()
