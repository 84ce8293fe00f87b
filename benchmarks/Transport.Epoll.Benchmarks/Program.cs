using BenchmarkDotNet.Running;

// Runs the micro-benchmarks of this assembly: dotnet run -c Release --project benchmarks/Transport.Epoll.Benchmarks -- --filter '*'
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
