import sys

print("argv:", sys.argv[1:])
print("performance: 77 tokens_per_second")
