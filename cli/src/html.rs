//! `-o html` of `list` and `diff`: one self-contained page (inline CSS, JavaScript and
//! SVG; no network fetch). Namespaces are groups (columns), endpoints and IP ranges are
//! nodes, allowed flows (or, for a diff, added/removed/changed flows) are edges. Clicking
//! an edge shows its ports and the deciding rules; clicking a node shows its flows.
//!
//! The data is embedded as JSON (`<script type="application/json" id="netpol-data">`)
//! and drawn by the inline script, which marks `<body data-status="drawn">` when done and
//! `data-error` on any script error, so a headless browser test can check both.

use serde::Serialize;

/// One node of the picture.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Node {
    /// `ns/name`, `ns/kind/name` or a CIDR.
    pub(crate) id: String,
    /// Group: the namespace, or `external` for IP ranges.
    pub(crate) group: String,
}

/// One edge of the picture.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Edge {
    pub(crate) src: String,
    pub(crate) dst: String,
    /// `allowed`, or for a diff `added`, `removed`, `changed`.
    pub(crate) kind: &'static str,
    /// What is allowed (for a diff: after), as text.
    pub(crate) ports: String,
    /// For a diff: what was allowed before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) old: Option<String>,
    /// The rules that allow it (`policy direction rule N`), both sides.
    pub(crate) rules: Vec<String>,
}

/// What a page shows.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Picture {
    pub(crate) title: String,
    pub(crate) nodes: Vec<Node>,
    pub(crate) edges: Vec<Edge>,
}

impl Picture {
    /// A picture of `edges`, with a node per endpoint they name (groups from names).
    pub(crate) fn new(title: String, edges: Vec<Edge>) -> Picture {
        let mut nodes: Vec<Node> = edges
            .iter()
            .flat_map(|e| [e.src.clone(), e.dst.clone()])
            .map(|id| Node {
                group: group_of(&id),
                id,
            })
            .collect();
        // Namespaces by name, then IP ranges by address.
        nodes.sort_by_key(|n| {
            let addr =
                n.id.split_once('/')
                    .and_then(|(a, _)| a.parse::<std::net::IpAddr>().ok());
            (
                addr.is_some(),
                addr.map(|a| match a {
                    std::net::IpAddr::V4(v) => u128::from(u32::from(v)),
                    std::net::IpAddr::V6(v) => u128::from(v),
                }),
                n.group.clone(),
                n.id.clone(),
            )
        });
        nodes.dedup();
        Picture {
            title,
            nodes,
            edges,
        }
    }
}

fn group_of(id: &str) -> String {
    match id.split_once('/') {
        Some((ns, _)) if ns.parse::<std::net::IpAddr>().is_err() => ns.to_string(),
        _ => "external".to_string(),
    }
}

/// The rules that allow a flow, from an explanation: `policy egress|ingress rule N`.
pub(crate) fn rules_of(e: &policy_compiler::Explanation) -> Vec<String> {
    let mut out = Vec::new();
    for side in [&e.egress, &e.ingress] {
        if !side.isolated {
            out.push(format!("{} at {}: not isolated", side.direction, side.at));
            continue;
        }
        for a in &side.allowed_by {
            out.push(format!("{} {} rule {}", a.policy, side.direction, a.rule));
        }
    }
    out
}

/// The page.
pub(crate) fn page(p: &Picture) -> String {
    // `</` inside a script element would end it: JSON allows `<\/`.
    let data = serde_json::to_string(p)
        .unwrap_or_else(|_| "{\"title\":\"\",\"nodes\":[],\"edges\":[]}".into())
        .replace("</", "<\\/");
    let title = escape(&p.title);
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>{title}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{title}</h1><span id="legend"></span></header>
<main><div id="canvas"></div><aside id="details"><p>Click an edge or an endpoint.</p></aside></main>
<script type="application/json" id="netpol-data">{data}</script>
<script>{JS}</script>
</body>
</html>
"#
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const CSS: &str = r#"
body{font:14px system-ui,sans-serif;margin:0;color:#222}
header{padding:8px 16px;border-bottom:1px solid #ddd;display:flex;gap:24px;align-items:baseline}
h1{font-size:18px;margin:0}
main{display:flex;height:calc(100vh - 50px)}
#canvas{flex:1;overflow:auto}
#details{width:340px;border-left:1px solid #ddd;padding:8px 12px;overflow:auto}
.ns rect{fill:#f4f6fa;stroke:#9aa5b8;rx:8}
.node text{fill:#222}
.ns text.label{font-weight:bold;fill:#445}
.node circle{fill:#4a7bd0;stroke:#fff;stroke-width:2;cursor:pointer}
.node.range circle{fill:#888}
.node text{font-size:12px;pointer-events:none}
.edge{fill:none;stroke-width:1.6;cursor:pointer;opacity:.75}
.edge:hover,.edge.sel{stroke-width:4;opacity:1}
.edge.allowed{stroke:#4a7bd0}.edge.added{stroke:#1a9d3c}.edge.removed{stroke:#d0342c;stroke-dasharray:5 3}.edge.changed{stroke:#e08a00}
.node.sel circle{stroke:#000}
.arrow.allowed{fill:#4a7bd0}.arrow.added{fill:#1a9d3c}.arrow.removed{fill:#d0342c}.arrow.changed{fill:#e08a00}
.key{display:inline-block;width:18px;height:3px;margin:0 4px 3px 10px;vertical-align:middle}
"#;

const JS: &str = r#"
(function(){
'use strict';
window.addEventListener('error',function(e){document.body.dataset.error=String(e.message);});
var data=JSON.parse(document.getElementById('netpol-data').textContent);
var NS='http://www.w3.org/2000/svg';
function el(n,a,p){var e=document.createElementNS(NS,n);for(var k in a){e.setAttribute(k,a[k]);}if(p){p.appendChild(e);}return e;}
var groups={},order=[];
data.nodes.forEach(function(n){if(!groups[n.group]){groups[n.group]=[];order.push(n.group);}groups[n.group].push(n);});
order.sort(function(a,b){return (a==='external')-(b==='external')||(a<b?-1:a>b?1:0);});
var colW=230,rowH=34,top=40,pos={};
var maxRows=0;order.forEach(function(g){maxRows=Math.max(maxRows,groups[g].length);});
var W=Math.max(order.length*colW+40,400),H=top+maxRows*rowH+60;
var svg=el('svg',{width:W,height:H,viewBox:'0 0 '+W+' '+H,id:'picture'},document.getElementById('canvas'));
var defs=el('defs',{},svg);
['allowed','added','removed','changed'].forEach(function(k){
 var m=el('marker',{id:'arrow-'+k,viewBox:'0 0 10 10',refX:'18',refY:'5',markerWidth:'6',markerHeight:'6',orient:'auto-start-reverse'},defs);
 el('path',{d:'M0,0L10,5L0,10z','class':'arrow '+k},m);
});
var gGroups=el('g',{id:'groups'},svg),gEdges=el('g',{id:'edges'},svg),gNodes=el('g',{id:'nodes'},svg);
order.forEach(function(g,i){
 var x=20+i*colW,bg=el('g',{'class':'ns','data-ns':g},gGroups),grp=el('g',{'data-ns':g},gNodes);
 el('rect',{x:x,y:10,width:colW-30,height:groups[g].length*rowH+top},bg);
 var t=el('text',{x:x+10,y:30,'class':'label'},bg);t.textContent=g;
 groups[g].forEach(function(n,j){
  var cx=x+18,cy=top+20+j*rowH;pos[n.id]={x:cx,y:cy};
  var ng=el('g',{'class':'node'+(g==='external'?' range':''),'data-id':n.id},grp);
  el('circle',{cx:cx,cy:cy,r:8},ng);
  var lt=el('text',{x:cx+14,y:cy+4},ng);lt.textContent=g==='external'?n.id:n.id.slice(g.length+1);
  ng.addEventListener('click',function(){showNode(n.id,ng);});
 });
});
var details=document.getElementById('details');
function clearSel(){Array.prototype.forEach.call(document.querySelectorAll('.sel'),function(e){e.classList.remove('sel');});}
function line(t){var p=document.createElement('p');p.textContent=t;details.appendChild(p);}
function list(items){var u=document.createElement('ul');items.forEach(function(i){var li=document.createElement('li');li.textContent=i;u.appendChild(li);});details.appendChild(u);}
function showEdge(e,path){clearSel();path.classList.add('sel');details.textContent='';
 var h=document.createElement('h2');h.textContent=e.src+' \u2192 '+e.dst;details.appendChild(h);
 line(e.kind+': '+(e.old!==undefined?e.old+' \u2192 ':'')+e.ports);
 if(e.rules.length){line('deciding rules:');list(e.rules);}
 details.dataset.shown='edge';}
function showNode(id,g){clearSel();g.classList.add('sel');details.textContent='';
 var h=document.createElement('h2');h.textContent=id;details.appendChild(h);
 var out=data.edges.filter(function(e){return e.src===id;}).map(function(e){return '\u2192 '+e.dst+': '+e.ports;});
 var inn=data.edges.filter(function(e){return e.dst===id;}).map(function(e){return '\u2190 '+e.src+': '+e.ports;});
 line('out ('+out.length+')');list(out);line('in ('+inn.length+')');list(inn);details.dataset.shown='node';}
data.edges.forEach(function(e,i){
 var a=pos[e.src],b=pos[e.dst];if(!a||!b){return;}
 var d;if(e.src===e.dst){d='M'+a.x+','+(a.y-8)+' c30,-30 30,30 0,16';}
 else{var mx=(a.x+b.x)/2,my=(a.y+b.y)/2-(a.x===b.x?0:30)+(a.x===b.x?0:0),cx=a.x===b.x?a.x+60:mx;d='M'+a.x+','+a.y+' Q'+cx+','+my+' '+b.x+','+b.y;}
 var p=el('path',{d:d,'class':'edge '+e.kind,'marker-end':'url(#arrow-'+e.kind+')','data-src':e.src,'data-dst':e.dst,'data-index':i},gEdges);
 var t=el('title',{},p);t.textContent=e.src+' \u2192 '+e.dst+': '+e.ports;
 p.addEventListener('click',function(){showEdge(e,p);});
});
var legend=document.getElementById('legend'),kinds={};data.edges.forEach(function(e){kinds[e.kind]=(kinds[e.kind]||0)+1;});
Object.keys(kinds).sort().forEach(function(k){var s=document.createElement('span');s.className='key';s.style.background=getComputedStyle(document.querySelector('.edge.'+k)).stroke;legend.appendChild(s);legend.appendChild(document.createTextNode(k+' ('+kinds[k]+')'));});
// #edge=N or #node=ID selects on load (links, and tests without a mouse).
var h=decodeURIComponent(location.hash.slice(1));
if(h.indexOf('edge=')===0){var pe=gEdges.querySelector('[data-index="'+h.slice(5)+'"]');if(pe){showEdge(data.edges[+h.slice(5)],pe);}}
if(h.indexOf('node=')===0){var nn=Array.prototype.filter.call(gNodes.querySelectorAll('.node'),function(n){return n.getAttribute('data-id')===h.slice(5);})[0];if(nn){showNode(h.slice(5),nn);}}
document.body.dataset.nodes=String(data.nodes.length);
document.body.dataset.edges=String(gEdges.childNodes.length);
document.body.dataset.status='drawn';
})();
"#;
