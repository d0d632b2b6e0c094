#!/bin/bash
# jaxrec on several hosts under SLURM: one process per node, each driving all the node's
# GPUs. jax.distributed.initialize() (called by jaxrec.main) reads the SLURM variables, so
# nothing else needs to be set. See docs/multihost.md.
#
#   sbatch scripts/slurm_example.sh
#
#SBATCH --job-name=jaxrec-sqn
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
# A workdir every node can see (checkpoints are written by all processes, logs by
# process 0 only); the prepared data directory likewise, or prepare it beforehand.
WORKDIR=${WORKDIR:-$PWD/runs/sqn_${SLURM_JOB_ID}}
export JAXREC_DATA_DIR=${JAXREC_DATA_DIR:-$PWD/data_cache}

# 16 GPUs: the batch over 8 data-parallel groups, items over 2 devices per group.
srun .venv/bin/python -m jaxrec.main \
  --config=configs/sqn.py:dataset=retailrocket,encoder=sasrec,raw_dir=$HOME/data/retailrocket \
  --config.mesh.data=-1 --config.mesh.model=2 \
  --config.train.batch_size=1024 \
  --config.train.compute_dtype=bfloat16 \
  --workdir="$WORKDIR"
