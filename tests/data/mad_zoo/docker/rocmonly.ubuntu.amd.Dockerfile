# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU'}
# Needs a ROCm image this machine cannot get (the .invalid domain never resolves), named in FROM
# as some of madengine's fixture Dockerfiles do: the item fails with the pull's error, the others run.
FROM registry.invalid/rocm/pytorch:latest
