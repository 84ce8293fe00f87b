using System.Collections;
using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;

namespace Transport.Epoll.Internal;

/// <summary>
/// The connection is its own feature collection: the transport's features are answered from fields without a
/// dictionary, and the features Kestrel adds go to a short list (a handful per connection).
/// </summary>
internal sealed partial class EpollConnection :
    IFeatureCollection,
    IConnectionIdFeature,
    IConnectionTransportFeature,
    IConnectionItemsFeature,
    IMemoryPoolFeature,
    IConnectionLifetimeFeature,
    IConnectionEndPointFeature,
    IEpollConnectionFeature,
    IConnectionSendFileFeature
{
    private List<KeyValuePair<Type, object>>? _extraFeatures;
    private int _featureRevision;
    private bool _ownFeatureReplaced;

    bool IFeatureCollection.IsReadOnly => false;

    int IFeatureCollection.Revision => _featureRevision;

    object? IFeatureCollection.this[Type key]
    {
        get
        {
            ArgumentNullException.ThrowIfNull(key);
            if (_extraFeatures is { } extra)
            {
                // Features set by others win over the transport's own (Kestrel may replace one).
                foreach (KeyValuePair<Type, object> pair in extra)
                {
                    if (pair.Key == key)
                    {
                        return pair.Value;
                    }
                }
            }

            if (key == typeof(IProxyProtocolFeature))
            {
                return _proxyHeader is { Complete: true } header ? header : null;
            }

            return IsOwnFeature(key) ? this : null;
        }
        set
        {
            ArgumentNullException.ThrowIfNull(key);
            _featureRevision++;
            _ownFeatureReplaced |= IsOwnFeature(key);
            // Kestrel adds up to four features to a connection: room for four, not more (idle connections count).
            _extraFeatures ??= new List<KeyValuePair<Type, object>>(4);
            for (int i = 0; i < _extraFeatures.Count; i++)
            {
                if (_extraFeatures[i].Key == key)
                {
                    if (value is null)
                    {
                        _extraFeatures.RemoveAt(i);
                    }
                    else
                    {
                        _extraFeatures[i] = new KeyValuePair<Type, object>(key, value);
                    }

                    return;
                }
            }

            if (value is not null)
            {
                _extraFeatures.Add(new KeyValuePair<Type, object>(key, value));
            }
        }
    }

    TFeature? IFeatureCollection.Get<TFeature>() where TFeature : default
    {
        // Kestrel asks the connection for every feature its request doesn't know, and UseEpollSendFile asks for
        // IConnectionSendFileFeature on each request: the transport's own answer first, in a few reference compares,
        // unless one of them was replaced.
        Type key = typeof(TFeature);
        if (!_ownFeatureReplaced && IsOwnFeature(key))
        {
            return (TFeature)(object)this;
        }

        return (TFeature?)((IFeatureCollection)this)[key];
    }

    void IFeatureCollection.Set<TFeature>(TFeature? instance) where TFeature : default
        => ((IFeatureCollection)this)[typeof(TFeature)] = instance;

    IEnumerator<KeyValuePair<Type, object>> IEnumerable<KeyValuePair<Type, object>>.GetEnumerator()
    {
        foreach (Type type in s_ownFeatures)
        {
            if (_extraFeatures is null || !_extraFeatures.Exists(p => p.Key == type))
            {
                yield return new KeyValuePair<Type, object>(type, this);
            }
        }

        if (_proxyHeader is { Complete: true } header && (_extraFeatures is null || !_extraFeatures.Exists(p => p.Key == typeof(IProxyProtocolFeature))))
        {
            yield return new KeyValuePair<Type, object>(typeof(IProxyProtocolFeature), header);
        }

        if (_extraFeatures is not null)
        {
            foreach (KeyValuePair<Type, object> pair in _extraFeatures)
            {
                yield return pair;
            }
        }
    }

    IEnumerator IEnumerable.GetEnumerator() => ((IEnumerable<KeyValuePair<Type, object>>)this).GetEnumerator();

    // IConnectionSendFileFeature first: UseEpollSendFile asks for it on every request.
    private static readonly Type[] s_ownFeatures =
    [
        typeof(IConnectionSendFileFeature),
        typeof(IConnectionIdFeature),
        typeof(IConnectionTransportFeature),
        typeof(IConnectionItemsFeature),
        typeof(IMemoryPoolFeature),
        typeof(IConnectionLifetimeFeature),
        typeof(IConnectionEndPointFeature),
        typeof(IEpollConnectionFeature),
    ];

    private static bool IsOwnFeature(Type type)
    {
        // == on runtime types is a reference compare (Array.IndexOf went through EqualityComparer<Type>).
        foreach (Type own in s_ownFeatures)
        {
            if (own == type)
            {
                return true;
            }
        }

        return false;
    }

    void IConnectionLifetimeFeature.Abort() => Abort();

    IDuplexPipe IConnectionTransportFeature.Transport
    {
        get => Transport;
        set => Transport = value;
    }
}
