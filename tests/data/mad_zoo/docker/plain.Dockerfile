FROM mad-base:bookworm
