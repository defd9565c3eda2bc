// rope-opt: compute, compare, save and plot RoPE scaling tables. Example:
//   rope-opt --head-dim 128 --base 10000 --orig 4096 --target 16384 --compare pi,yarn,dprope --json
return LlamaRun.RopeOpt.RopeOptCli.Run(args, Console.Out, Console.Error);
