"""MLX plugins: the kernel (mlx_plugins.kernel) and the plugins, one folder per kind."""
