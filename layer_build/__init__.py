"""Build and deploy kafka-relay: reproducible layer/function zips, and a boto3 deployer.

``python -m layer_build.build`` writes ``dist/kafka-relay-layer-<arch>.zip``,
``dist/producer-functions.zip`` and ``dist/manifest.json``;
``python -m layer_build.deploy`` publishes them to Lambda. ``./build.sh build``
and ``./build.sh deploy`` run the same commands.
"""
