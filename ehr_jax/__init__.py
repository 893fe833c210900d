"""ehr-jax: JAX-native scaling-law studies of EHR foundation models on MEDS data."""
