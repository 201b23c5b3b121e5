# `make help` lists the targets. Every target that runs code installs what it needs first.
PY      := .venv/bin/python
STAMP   := .venv/.installed
# The sweep that `make table-demo` tabulates: the newest Hydra sweep dir unless SWEEP=... is given.
SWEEP   ?= $(shell ls -td outputs/demo outputs/multirun/*/*/ 2>/dev/null | head -1)

.PHONY: help setup demo table-demo table-amun-cifar10 table-amun-lipschitz table-offline table-trw \
        table-lotos table-lotos-offline table-regimes table-regimes-class tune bench bench-gpu \
        verify-gpu verify-gpu-wheels test test-slow clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv with an editable install (idempotent)

# CPU=1: torch and torchvision from PyTorch's CPU-only wheel index (about 1 GB less torch and no
# 3.2 GB of CUDA libraries; for a machine without an NVIDIA GPU). Not tried on our CI machine, which
# reaches no index but PyPI's.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	@echo "setup: installing torch, torchvision, hydra-core, wandb, scikit-learn, pandas, matplotlib,"
	@echo "  pytest and this package (editable) into .venv. With PyPI's torch that is about 6.3 GB,"
	@echo "  3.2 GB of it CUDA libraries; make setup CPU=1 takes a CPU-only torch instead."
	$(if $(CPU),$(PY) -m pip install --quiet --disable-pip-version-check --index-url $(TORCH_CPU_INDEX) torch torchvision)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@du -sh .venv | sed 's/^/setup: .venv is /'
	touch $(STAMP)

demo: setup  ## original + retrain oracle + ft, rl, ga on the bundled digits, then the table
	$(PY) -m runner -m experiment=demo
	$(PY) -m runner.report outputs/demo

table-demo: setup  ## table of a sweep dir (SWEEP=dir, default: the newest sweep)
	@test -n "$(SWEEP)" || { echo "no sweep dir under outputs/; run a sweep first or pass SWEEP=dir"; exit 1; }
	$(PY) -m runner.report $(SWEEP)

table-amun-cifar10: setup  ## AMUN Table 1 (CIFAR-10, 9 methods x 10%/50% x 3 seeds; a GPU job)
	$(PY) -m runner -m experiment=amun_table1 $(ARGS)
	$(PY) -m runner.report outputs/amun_table1

table-amun-lipschitz: setup  ## AMUN on clipped ResNet-18s without BN (Tables 3/6; a GPU job)
	$(PY) -m runner -m experiment=amun_lipschitz method=retrain,amun $(ARGS)
	$(PY) -m runner -m experiment=amun_lipschitz method=amun method.use_retain=false $(ARGS)
	$(PY) -m runner.report outputs/amun_lipschitz \
	    --columns forget_acc,retain_acc,test_acc,rmia_ft_auc,rmia_fr_auc,avg_gap

# LOTOS: ensembles of 3 clipped ResNet-18s, independent vs LOTOS; PGD robustness, transferability.
LOTOS_OFFLINE := dataset=cifar10_jpeg model.width=16 train.epochs=15 ensemble.attack.n=500 logger=none
table-lotos: setup  ## LOTOS vs independent ensembles on CIFAR-10 (a GPU job)
	$(PY) -m runner -m experiment=lotos $(ARGS)
	$(PY) -m runner.report outputs/lotos/cifar10
table-lotos-offline: setup  ## the same at width 16 on the CIFAR-10 JPEG subset (CPU, ~30 min)
	$(PY) -m runner -m experiment=lotos $(LOTOS_OFFLINE) $(ARGS)
	$(PY) -m runner.report outputs/lotos/cifar10_jpeg

# The AMUN comparison on the offline data (digits, the CIFAR-10 JPEG subset), 3 seeds, with and
# without D_R: docs/results/. Over an hour on a 2-core CPU, mostly the CIFAR subset (the digits
# sweeps alone: 350 s). The baselines every benchmark has (NegGrad+, SSD, Bad Teacher, CF-k, EU-k)
# need D_R; EU-k trains for the original's epochs.
BENCHMARK_BASELINES := neggrad_plus,ssd,bad_teacher,cf_k,eu_k
WITH_DR    := retrain,ft,rl,ga,bs,l1_sparse,salun,amun,amun_salun,$(BENCHMARK_BASELINES)
WITHOUT_DR := rl,ga,bs,salun,amun,amun_salun
table-offline: setup  ## AMUN comparison on digits + CIFAR-10 JPEG subset, 3 seeds (CPU, ~1 h)
	for ds in digits cifar10_jpeg; do \
	  $(PY) -m runner -m experiment=compare dataset=$$ds logger=none method=$(WITH_DR) $(ARGS) && \
	  $(PY) -m runner -m experiment=compare dataset=$$ds logger=none method=$(WITHOUT_DR) \
	      method.use_retain=false $(ARGS) && \
	  $(PY) -m runner.report outputs/compare/$$ds || exit 1; \
	done

# The AMUN code's tuning of every method (experiment=tune): lr x decay period on DATASET, with D_R,
# on a seed the tables do not report, Avg. Gap with RMIA's FT AUC; the picks go to
# conf/method_dataset/<method>_<DATASET>.yaml. TUNE_LRS / TUNE_DECAYS narrow the grid on a CPU.
TUNE_METHODS ?= ft,rl,ga,bs,l1_sparse,salun,amun,amun_salun
TUNE_LRS     ?= 0.1,0.05,0.01,0.005,1e-3,1e-4,1e-5
TUNE_DECAYS  ?= 1,5,10
TUNE_SEED    ?= 2
tune: setup  ## tune every method's lr x decay on DATASET=<option>, write conf/method_dataset/
	@test -n "$(DATASET)" || { echo "give DATASET=<a conf/dataset option>"; exit 1; }
	$(PY) -m runner -m experiment=tune dataset=$(DATASET) eval=rmia logger=none \
	    seed=$(TUNE_SEED) method=$(TUNE_METHODS) method.lr=$(TUNE_LRS) \
	    method.decay_every=$(TUNE_DECAYS) $(ARGS)
	$(PY) -m runner.tune outputs/tune/$(DATASET) --write

# The AMUN comparison in the two CPU regimes (docs/results/regimes.md): paper-like (Fashion-MNIST,
# the original fits its training set, a 5-15 point forget-test gap) and large-gap (the CIFAR-10
# JPEG subset, memorized, a 50 point gap); eval=rmia with 8 reference models, 3 seeds, with and
# without D_R (REGIMES=<one of them> for one). Hours on a 2-core CPU. table-regimes-class: the
# class-unlearning comparison in the paper-like regime.
REGIMES ?= fashion_mnist_paperlike cifar10_jpeg_largegap
table-regimes: setup  ## the AMUN comparison in both CPU regimes, 3 seeds, RMIA (hours)
	for ds in $(REGIMES); do \
	  $(PY) -m runner -m experiment=compare dataset=$$ds eval=rmia logger=none \
	      method=$(WITH_DR) $(ARGS) && \
	  $(PY) -m runner -m experiment=compare dataset=$$ds eval=rmia logger=none \
	      method=$(WITHOUT_DR) method.use_retain=false $(ARGS) && \
	  $(PY) -m runner.report outputs/compare/$$ds --columns $(REGIME_COLUMNS) || exit 1; \
	done
table-regimes-class: setup  ## class unlearning (TRW, MIA-NN, U-LiRA) in the paper-like regime
	$(PY) -m runner -m experiment=trw_table dataset=fashion_mnist_paperlike logger=none \
	    method=$(CLASS_METHODS) $(ARGS)
	$(PY) -m runner.report outputs/trw_table/fashion_mnist_paperlike --columns $(CLASS_COLUMNS)
REGIME_COLUMNS := forget_acc,retain_acc,test_acc,mia_efficacy,rmia_ft_auc,avg_gap

# Class unlearning (TRW paper's comparison), forget class 1, 3 seeds, on the offline data.
CLASS_METHODS := retrain,ft,rl,ga,bs,be,l1_sparse,salun,scrub,trw,unsir,$(BENCHMARK_BASELINES)
CLASS_COLUMNS := forget_acc,retain_acc,test_forget_acc,test_retain_acc,mia_efficacy,mia_nn,ulira_acc,avg_gap
table-trw: setup  ## class-unlearning table (TRW, MIA-NN) on digits + CIFAR-10 JPEG subset, 3 seeds
	for ds in digits cifar10_jpeg; do \
	  $(PY) -m runner -m experiment=trw_table dataset=$$ds logger=none method=$(CLASS_METHODS) \
	      $(ARGS) && \
	  $(PY) -m runner.report outputs/trw_table/$$ds --columns $(CLASS_COLUMNS) || exit 1; \
	done

# Benchmarks (benchmarks/, docs/results/bench.md): hot-path throughput against a plain PyTorch
# baseline (training step, inference, PGD; medians of 5 runs), and a whole small experiment timed
# stage by stage, and where a study's time goes beyond training (MIA-efficacy, a sweep's evaluations,
# a whole 9-method study against one command per job). JSON under outputs/bench/.
# BENCH_ARGS / EXPERIMENT_ARGS / STUDY_ARGS pass options through.
CIFAR10_JPEG ?= ../shared/data/cifar10-jpeg.tar.gz
bench: setup  ## benchmarks on this machine (CPU: about 45 minutes on 2 cores, 36 of them benchmarks.study)
	$(PY) -m benchmarks.throughput $(BENCH_ARGS)
	$(PY) -m benchmarks.experiment $(EXPERIMENT_ARGS)
	$(PY) -m benchmarks.study $(STUDY_ARGS)

bench-gpu: setup  ## the GPU figures of docs/results/bench.md (CIFAR-10 JPEG set, CUDA)
	$(PY) -m benchmarks.fast
	$(PY) -m benchmarks.throughput --device cuda --data $(CIFAR10_JPEG) --batch-size 512 \
	    --steps 30 --workers 4 --infer-images 10000 --pgd-images 1024 --name throughput_cuda \
	    --models small_cnn,resnet18,airbench --pgd-models small_cnn,resnet18
	$(PY) -m benchmarks.experiment --name experiment_cuda16 dataset=cifar10_jpeg \
	    dataset.subset.train=null dataset.subset.test=null model=airbench train=fast \
	    reference.num_models=16 device=cuda

# The paper-scale check (benchmarks/verify_gpu.py): Table 1's comparison at full scale on the
# CIFAR-10 JPEG set, train=fast's time to accuracy, the airbench package's own trainer on the same
# tensors, the throughput rows; within BUDGET seconds, skipping what does not fit. DEVICE=cpu TINY=1:
# every stage at toy size (the check before GPU minutes are spent). Writes docs/results/verify_gpu/
# (TINY: outputs/verify_gpu_tiny/results/).
DEVICE ?= cuda
BUDGET ?= 540
verify-gpu: setup  ## the paper-scale check on one GPU in 9 minutes (DEVICE=cpu TINY=1: toy size)
	$(PY) -m benchmarks.verify_gpu --device $(DEVICE) --budget-s $(BUDGET) $(if $(TINY),--tiny) \
	    --data $(CIFAR10_JPEG) $(VERIFY_ARGS)

# For a GPU machine without a package registry (and its own torch): the wheels the check needs
# beyond torch, torchvision, numpy, scikit-learn, pandas, matplotlib and tqdm, into .whl/; copy the
# JPEG archive into the checkout (mkdir -p .gpudata && cp $(CIFAR10_JPEG) .gpudata/), and there:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site python3 -m benchmarks.verify_gpu --data .gpudata/cifar10-jpeg.tar.gz
# (docs/results/bench.md, "make verify-gpu", has the whole command).
verify-gpu-wheels: setup  ## download the wheels verify-gpu needs on an offline GPU machine to .whl/
	$(PY) -m pip download -q --no-deps -d .whl airbench==0.1.8 $$($(PY) -m pip freeze \
	    | grep -iE '^(hydra-core|omegaconf|antlr4-python3-runtime)==')
	cd .whl && for f in *.tar.gz; do ../$(PY) -m pip wheel -q --no-deps --no-build-isolation $$f \
	    && rm $$f; done
	@ls .whl

test: setup  ## the test suite (fast CPU tests)
	$(PY) -m pytest -q

test-slow: setup  ## the tests marked slow (real-data checks, minutes)
	$(PY) -m pytest -q -m slow

clean:  ## remove outputs (runs, sweeps, cache) and Python caches; keeps .venv
	rm -rf outputs .pytest_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
