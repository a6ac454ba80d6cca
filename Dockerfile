# The stemsplit image for KubeRay (k8s/rayservice.yaml): Ray's official GPU image, the
# CUDA build of torch, the project installed from its wheel, run as the image's non-root
# user `ray`. RAY_VERSION must equal the RayService's rayVersion and fall in pyproject's
# ray pin (tests/k8s/test_manifests.py checks both).
#
#   docker build -t stemsplit:0.1.0 .
#   docker build -t stemsplit:0.1.0 --build-arg MODELS="--all --hub" .   # weights baked in
#
# MODELS, when set, holds the arguments of `python -m models fetch` (the model names or
# --all, --accept-licence NAME, --hub): the weights are fetched into /models at build
# time, each file checked against the routing's sha256, and a mismatch fails the build.
# Without it the image holds no weights and the RayService's init container fetches
# them into a volume when a GPU pod starts.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=311

FROM rayproject/ray:${RAY_VERSION}-py${PYTHON_TAG}-gpu AS wheel
WORKDIR /home/ray/src
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users models models
COPY --chown=ray:users serve_app serve_app
RUN pip wheel --no-deps --no-cache-dir --wheel-dir /home/ray/wheels .

FROM rayproject/ray:${RAY_VERSION}-py${PYTHON_TAG}-gpu
# On Linux x86_64 the default index's torch wheels are the CUDA builds.
ARG TORCH_VERSION=2.13.0
ARG MODELS=""
USER root
RUN mkdir -p /models /data/stemsplit && chown ray:users /models /data/stemsplit
USER ray
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}"
COPY --from=wheel /home/ray/wheels /home/ray/wheels
RUN pip install --no-cache-dir "$(echo /home/ray/wheels/stemsplit-*.whl)[postgres]" \
    && rm -rf /home/ray/wheels
# demucs hub models (`fetch --hub`) go to the Hugging Face cache: under /models too.
ENV HF_HOME=/models/huggingface
RUN if [ -n "${MODELS}" ]; then python -m models fetch ${MODELS} --no-progress --model-dir /models; fi
# The Serve config the migration Job reads its database settings from (k8s/migrate-job.yaml).
COPY --chown=ray:users configs/cluster.yaml /home/ray/configs/cluster.yaml
WORKDIR /home/ray
