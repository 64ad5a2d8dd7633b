"""devstral_jax: fine-tune Devstral Small into an Elixir coding model with JAX/Flax."""
