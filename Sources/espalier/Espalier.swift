// The `espalier` command-line host.

import ArgumentParser
import EspalierCore

@main
struct Espalier: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "espalier",
        abstract: "Neural architecture search inside a memory budget.",
        subcommands: [SearchCommand.self, MemoryCommand.self, TrainCommand.self, TrainPrunedCommand.self, EvalCommand.self, TrainBaselineCommand.self, PluginsCommand.self, BenchCommand.self, KernelBenchCommand.self])
}
