// The components the loader admitted, by id, with the libraries that brought them, the libraries
// it refused and why, and warnings (skipped files, shadowed names). What a run selects from:
// `require` finds a component by id, short name or id without revision, and names the
// alternatives when it cannot (that lookup and the search methods: SearchMethods.swift).
// Not here: finding and checking libraries (PluginLoader.swift), choosing a run's components
// from flags and config files (Selection.swift).

import Foundation

/// Every loaded component by id, and what failed to load.
public final class PluginRegistry {
    public private(set) var libraries: [LoadedLibrary] = []
    public internal(set) var failures: [LoadFailure] = []
    /// Things skipped or shadowed without being failures (missing plugin folders, libraries not
    /// named libespalier-*, dynamic methods with a name already taken), one line each.
    public internal(set) var warnings: [String] = []
    private var byID: [String: Component] = [:]

    public init() {}

    func add(_ library: LoadedLibrary) {
        for c in library.components {
            if let m = c.method, let other = components.first(where: { $0.method?.name == m.name }) {
                warnings.append("method '\(m.name)' of \(c.id) (\(library.path)) is ignored: \(other.id) (\(other.library.path)) already brings a method of that name")
            }
        }
        libraries.append(library)
        for c in library.components { byID[c.id] = c }
    }

    public var components: [Component] { libraries.flatMap(\.components) }
    public func component(id: String) -> Component? { byID[id] }

    /// The component `id` of `kind` — or the one of that kind whose short name (`gdas`) or id
    /// without revision is `id`, where only one has it — or an error naming the candidates of an
    /// ambiguous short name, the nearest name ("did you mean") and what is available.
    public func require(_ id: String, kind: ComponentKind? = nil) throws -> Component {
        if let c = byID[id], kind == nil || c.kind == kind! { return c }
        return try named(id, kind: kind)
    }

    /// The dynamic methods that can fill `slot`, across all components.
    public func methods(slot: String) -> [DynamicMethod] { components.flatMap { $0.methods.filter { $0.slot == slot } } }
    public var allMethods: [DynamicMethod] { components.flatMap(\.methods) }
}
